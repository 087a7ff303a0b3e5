"""The blank-image control's per-pair metrics on hand-written responses."""

import pytest

from verl.rewards.vision_control import CONTROL_METRICS, answers_differ, blank_image_control


@pytest.mark.parametrize(
    ("response", "blank_response", "differ"),
    [
        ("\\boxed{red}", "\\boxed{red}", False),
        ("<think>x</think> \\boxed{red}", "other words \\boxed{ Red }", False),  # same answer, other text
        ("\\boxed{2}", "\\boxed{two}", False),  # equivalent forms are the same answer
        ("\\boxed{red}", "\\boxed{blue}", True),
        ("\\boxed{red}", "no answer at all", True),  # an answer against none is a change
        ("no answer", "still none", False),  # two missing answers do not count as a change
    ],
)
def test_answers_differ_compares_final_answers(response, blank_response, differ):
    assert answers_differ(response, blank_response) is differ


def test_control_metrics_per_pair():
    rows = blank_image_control(
        responses=["\\boxed{red}", "\\boxed{red}", "\\boxed{blue}", "\\boxed{left}"],
        blank_responses=["\\boxed{red}", "\\boxed{green}", "\\boxed{red}", "\\boxed{left}"],
        ground_truths=["red", "red", "red", "right"],
        problems=["What color is the circle?"] * 3 + ["Is the red circle on the left or on the right?"],
    )
    assert [set(row) for row in rows] == [set(CONTROL_METRICS)] * 4
    # sees nothing but is right | right only with the image | right only without | same wrong answer
    assert [row["accuracy_blank_image"] for row in rows] == [1.0, 0.0, 1.0, 0.0]
    assert [row["vision_reliance"] for row in rows] == [0.0, 1.0, 1.0, 0.0]
    assert [row["accuracy_drop"] for row in rows] == [0.0, 1.0, -1.0, 0.0]


def test_mismatched_lengths_are_an_error_naming_the_counts():
    with pytest.raises(ValueError, match="2 responses, 1 blank-image responses"):
        blank_image_control(["a", "b"], ["a"], ["x", "y"], ["p", "q"])
