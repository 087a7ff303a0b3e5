import pytest

from verl.rewards import RewardInput
from verl.rewards.r1v import cot_reward, r1v_reward


def _input(response: str, ground_truth: str = "4", problem: str = "What is 2+2?") -> RewardInput:
    return RewardInput(
        response=response, ground_truth=ground_truth, problem=problem, response_length=len(response)
    )


def test_r1v_weights_and_components() -> None:
    inputs = [
        _input(r"<think>2+2=4</think> So \boxed{4}."),  # format 1, accuracy 1
        _input(r"<think>2+2=5</think> \boxed{5}"),  # format 1, accuracy 0
        _input(r"\boxed{4}"),  # format 0, accuracy 1
        _input("four"),  # nothing
    ]
    assert r1v_reward(inputs) == [
        {"overall": 1.0, "format": 1.0, "accuracy": 1.0},
        {"overall": 0.5, "format": 1.0, "accuracy": 0.0},
        {"overall": 0.5, "format": 0.0, "accuracy": 1.0},
        {"overall": 0.0, "format": 0.0, "accuracy": 0.0},
    ]


def test_r1v_custom_format_weight() -> None:
    [score] = r1v_reward([_input(r"<think>x</think> \boxed{5}")], format_weight=0.2)
    assert score == pytest.approx({"overall": 0.2, "format": 1.0, "accuracy": 0.0})


def test_cot_is_strict_about_text_after_the_box() -> None:
    scores = cot_reward([_input(r"<think>2+2=4</think>\boxed{4}"), _input(r"<think>2+2=4</think> So \boxed{4}.")])
    assert scores[0] == {"overall": 1.0, "format": 1.0, "accuracy": 1.0}
    assert scores[1] == pytest.approx({"overall": 0.9, "format": 0.0, "accuracy": 1.0})


def test_option_text_counts_for_a_letter_ground_truth() -> None:
    problem = "Which shape?\nA. circle\nB. square"
    [score] = r1v_reward([_input(r"<think>four corners</think>\boxed{square}", "B", problem)])
    assert score["accuracy"] == 1.0


@pytest.mark.parametrize("bad_weight", [float("nan"), float("inf"), "0.5", None, True])
def test_invalid_weight_is_named(bad_weight: object) -> None:
    with pytest.raises(ValueError, match="'r1v': format_weight must be a finite number"):
        r1v_reward([_input("x")], format_weight=bad_weight)  # type: ignore[arg-type]


def test_empty_batch() -> None:
    assert r1v_reward([]) == [] and cot_reward([]) == []
