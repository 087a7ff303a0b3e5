"""Single-pass rewards: ``r1v`` (Vision-R1 / EasyR1's r1v) and ``cot`` (plain chain of thought).

Both grade the last ``\\boxed{}`` answer of the response; they differ in the format they ask for
and in the default format weight (each the default of the recipe it reproduces).
"""

from verl.rewards import RewardInput, check_weights
from verl.rewards.format import cot_format_ok, r1v_format_ok
from verl.rewards.grading import DEFAULT_GRADER, ResponseGrader, get_grader


def r1v_reward(
    reward_inputs: list[RewardInput], format_weight: float = 0.5, grader: str = DEFAULT_GRADER
) -> list[dict[str, float]]:
    """Vision-R1 style: ``<think>...</think>`` then an answer containing ``\\boxed{}``.

    overall = (1 - format_weight) * accuracy + format_weight * format
    (format_weight 0.5 is EasyR1's r1v default; the Vision-R1 recipe sets the reference's 0.1.)
    ``grader``: the answer grader by name (``verl.rewards.grading``).
    """
    check_weights("r1v", format_weight=format_weight)
    grade = get_grader(grader)
    return [
        _weighted_format_and_accuracy(item, r1v_format_ok(item.response), format_weight, grade)
        for item in reward_inputs
    ]


def cot_reward(
    reward_inputs: list[RewardInput], format_weight: float = 0.1, grader: str = DEFAULT_GRADER
) -> list[dict[str, float]]:
    """Chain of thought: exactly ``<think>...</think> \\boxed{...}``.

    overall = (1 - format_weight) * accuracy + format_weight * format
    (format_weight 0.1 is the Vision-SR1 reference's chain-of-thought baseline.)
    """
    check_weights("cot", format_weight=format_weight)
    grade = get_grader(grader)
    return [
        _weighted_format_and_accuracy(item, cot_format_ok(item.response), format_weight, grade)
        for item in reward_inputs
    ]


def _weighted_format_and_accuracy(
    item: RewardInput, format_ok: bool, format_weight: float, grade: ResponseGrader
) -> dict[str, float]:
    format_score = float(format_ok)
    accuracy = float(grade(item.response, item.ground_truth, item.problem))
    return {
        "overall": (1.0 - format_weight) * accuracy + format_weight * format_score,
        "format": format_score,
        "accuracy": accuracy,
    }
