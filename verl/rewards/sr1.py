"""Vision-SR1 rewards: ``sr1`` (self-reward: answer + format + visual) and ``see_think`` (its ablation).

The visual reward is the policy's own judgement of its perception: the self-reward stage re-asks
the question with only the ``<description>`` text (no image), and a re-answer that reaches the
ground truth means the perception was self-contained.
"""

from verl.rewards import RewardInput, check_weights
from verl.rewards.format import TAG_STYLES, graded_answer, sr1_format_ok, sr1_v2_format_ok
from verl.rewards.grading import DEFAULT_GRADER, get_grader


def sr1_reward(
    reward_inputs: list[RewardInput],
    accuracy_weight: float = 0.9,
    format_weight: float = 0.1,
    visual_weight: float = 1.0,
    grader: str = DEFAULT_GRADER,
    tags: str = "sr1",
) -> list[dict[str, float]]:
    """Vision-SR1 self-reward (defaults: the reference's 0.9 / 0.1 / 1.0).

    Components per response:
      format: 1 if the response is exactly description block, think block, ``\\boxed{}``.
      accuracy: 1 if its last ``\\boxed{}`` answer is the ground truth.
      visual: the fraction of its re-answers whose ``\\boxed{}`` answer is the ground truth
        (0 without re-answers, e.g. when the perception is missing and not re-prompted).
    answer = accuracy_weight * accuracy + format_weight * format (the pass-1 reward, what the
      paper's separate objective normalises apart from visual);
    overall = answer + visual_weight * visual.

    Diagnostics, 0/1, not part of overall:
      perception_sufficient: visual > 0.5 (a majority of re-answers correct; with one re-answer
        it equals visual).
      language_shortcut: accuracy 1 while the perception is not sufficient (the paper's Language
        Shortcut Rate, with the re-answers as judge).
      description_missing: the response has no (or an empty) ``<description>`` block.

    ``grader``: the answer grader by name (``verl.rewards.grading``), for answers and re-answers.
    ``tags``: ``sr1`` (the format above) or ``paper_v2``: ``<visual reasoning>``, ``<think>``,
    ``<answer>`` blocks, the answer and the re-answers graded on their ``<answer>`` block
    (``verl.rewards.format.graded_answer``); it must match ``self_reward.tags``.

    Raises ValueError when a response has a description but no re-answers: the self-reward
    stage did not run, and scoring visual 0 would silently train against perception.
    """
    check_weights(
        "sr1", accuracy_weight=accuracy_weight, format_weight=format_weight, visual_weight=visual_weight
    )
    if tags not in TAG_STYLES:
        raise ValueError(f"sr1 reward: tags={tags!r} is not one of {', '.join(TAG_STYLES)}")
    grade = get_grader(grader)
    format_ok = sr1_format_ok if tags == "sr1" else sr1_v2_format_ok

    def grade_response(text: str, ground_truth: str, problem: str | None) -> bool:
        return grade(graded_answer(text, tags), ground_truth, problem)

    scores = []
    for index, item in enumerate(reward_inputs):
        has_description = bool(item.description and item.description.strip())
        if has_description and not item.reanswers:
            raise ValueError(
                f"sr1 reward: sample {index} has a description but no re-answers; the sr1 reward needs "
                "the self-reward stage (self_reward.enable=true); use 'see_think' to train without it"
            )
        format_score = float(format_ok(item.response))
        accuracy = float(grade_response(item.response, item.ground_truth, item.problem))
        correct_reanswers = [grade_response(text, item.ground_truth, item.problem) for text in item.reanswers]
        visual = sum(correct_reanswers) / len(correct_reanswers) if correct_reanswers else 0.0
        perception_sufficient = float(visual > 0.5)
        answer = accuracy_weight * accuracy + format_weight * format_score
        scores.append(
            {
                "overall": answer + visual_weight * visual,
                "answer": answer,
                "format": format_score,
                "accuracy": accuracy,
                "visual": visual,
                "perception_sufficient": perception_sufficient,
                "language_shortcut": float(accuracy == 1.0 and perception_sufficient == 0.0),
                "description_missing": float(not has_description),
            }
        )
    return scores


def see_think_reward(
    reward_inputs: list[RewardInput], format_weight: float = 0.1, grader: str = DEFAULT_GRADER
) -> list[dict[str, float]]:
    """The see-think format without the self-reward (the reference's ablation; 0.1 is its default).

    overall = (1 - format_weight) * accuracy + format_weight * format, format and accuracy as in
    ``sr1_reward``. With format_weight 0 this is the reference's validation reward (accuracy only).
    """
    check_weights("see_think", format_weight=format_weight)
    grade_response = get_grader(grader)
    scores = []
    for item in reward_inputs:
        format_score = float(sr1_format_ok(item.response))
        accuracy = float(grade_response(item.response, item.ground_truth, item.problem))
        scores.append(
            {
                "overall": (1.0 - format_weight) * accuracy + format_weight * format_score,
                "format": format_score,
                "accuracy": accuracy,
            }
        )
    return scores
