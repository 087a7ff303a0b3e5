"""The blank-image control: does the model's answer depend on the image at all?

Every prompt is answered twice through the same engine and sampling, once with its images and
once with each image replaced by a blank image of the same size (``verl.data.vision.blank_like``:
the same number of vision tokens, no visual content). A model that answers from the question
alone (the language shortcut Vision-SR1 targets) gives the same answer both times.

Per response pair:
  accuracy_blank_image: the blank-image answer is correct.
  vision_reliance: the extracted (last ``\\boxed{}``) answers differ; two missing answers are
    "the same", one missing answer against a present one is a change.
  accuracy_drop: accuracy with the image minus accuracy with the blank image (-1, 0 or 1).
Averaged over a set of prompts these are the control's metrics; a model that cannot see has
vision_reliance 0 and accuracy_drop 0.
"""

from __future__ import annotations

from collections.abc import Sequence

from verl.rewards.grader import extract_boxed, grade_answer, grade_response

CONTROL_METRICS = ("accuracy_blank_image", "vision_reliance", "accuracy_drop")


def answers_differ(response: str, blank_response: str, problem: str | None = None) -> bool:
    """Whether the final answers of two responses differ (equivalent forms, e.g. ``2``/``two``, are equal)."""
    answer, blank_answer = extract_boxed(response), extract_boxed(blank_response)
    if answer is None or blank_answer is None:
        return (answer is None) != (blank_answer is None)
    return not grade_answer(blank_answer, answer, problem)


def blank_image_control(
    responses: Sequence[str],
    blank_responses: Sequence[str],
    ground_truths: Sequence[str],
    problems: Sequence[str],
) -> list[dict[str, float]]:
    """The control's three metrics for each (response, blank-image response) pair of one prompt."""
    if not len(responses) == len(blank_responses) == len(ground_truths) == len(problems):
        raise ValueError(
            f"blank_image_control: {len(responses)} responses, {len(blank_responses)} blank-image responses, "
            f"{len(ground_truths)} ground truths and {len(problems)} problems; they must pair one to one"
        )
    rows = []
    for response, blank_response, truth, problem in zip(responses, blank_responses, ground_truths, problems):
        correct = float(grade_response(response, truth, problem))
        blank_correct = float(grade_response(blank_response, truth, problem))
        rows.append(
            {
                "accuracy_blank_image": blank_correct,
                "vision_reliance": float(answers_differ(response, blank_response, problem)),
                "accuracy_drop": correct - blank_correct,
            }
        )
    return rows
