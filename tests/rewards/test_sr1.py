import pytest

from verl.rewards import RewardInput
from verl.rewards.sr1 import see_think_reward, sr1_reward

PROBLEM = "What color is the ball?"
GOOD_RIGHT = r"<description>A red ball.</description><think>It is red.</think>\boxed{red}"
GOOD_WRONG = r"<description>A ball.</description><think>Probably blue.</think>\boxed{blue}"
NO_DESCRIPTION_RIGHT = r"<think>It is red.</think>\boxed{red}"
REANSWER_RIGHT = r"<think>The text says red.</think> \boxed{Red}"
REANSWER_WRONG = r"<think>Unknown.</think> \boxed{green}"
REANSWER_UNBOXED = "red"  # no \boxed{}: not an answer


def _input(response: str, reanswers: list[str], description: str | None = "a description") -> RewardInput:
    return RewardInput(
        response=response,
        ground_truth="red",
        problem=PROBLEM,
        response_length=len(response),
        reanswers=reanswers,
        description=description,
    )


# Hand-computed with the defaults: overall = 0.9 * accuracy + 0.1 * format + 1.0 * visual.
SR1_CASES = [
    # (input, overall, format, accuracy, visual, perception_sufficient, language_shortcut, description_missing)
    (_input(GOOD_RIGHT, [REANSWER_RIGHT]), 2.0, 1, 1, 1.0, 1, 0, 0),
    (_input(GOOD_RIGHT, [REANSWER_WRONG]), 1.0, 1, 1, 0.0, 0, 1, 0),
    (_input(GOOD_WRONG, [REANSWER_RIGHT]), 1.1, 1, 0, 1.0, 1, 0, 0),
    (_input(GOOD_WRONG, [REANSWER_UNBOXED]), 0.1, 1, 0, 0.0, 0, 0, 0),
    (_input(NO_DESCRIPTION_RIGHT, [], description=None), 0.9, 0, 1, 0.0, 0, 1, 1),
    (_input(GOOD_RIGHT, [], description=""), 1.0, 1, 1, 0.0, 0, 1, 1),  # empty block = missing
    # several re-answers: visual is their mean; sufficient needs a strict majority
    (_input(GOOD_WRONG, [REANSWER_RIGHT, REANSWER_WRONG, REANSWER_RIGHT]), 0.1 + 2 / 3, 1, 0, 2 / 3, 1, 0, 0),
    (_input(GOOD_RIGHT, [REANSWER_RIGHT, REANSWER_WRONG]), 1.5, 1, 1, 0.5, 0, 1, 0),
    # the reference's whole-response fallback: re-answers without an extracted description
    (_input(NO_DESCRIPTION_RIGHT, [REANSWER_RIGHT], description=None), 1.9, 0, 1, 1.0, 1, 0, 1),
]


@pytest.mark.parametrize(
    ("item", "overall", "format_score", "accuracy", "visual", "sufficient", "shortcut", "missing"), SR1_CASES
)
def test_sr1_components_by_hand(
    item: RewardInput, overall: float, format_score: int, accuracy: int, visual: float, sufficient: int,
    shortcut: int, missing: int,
) -> None:
    [score] = sr1_reward([item])
    assert score == pytest.approx(
        {
            "overall": overall,
            "answer": overall - visual,  # default weights: visual_weight 1.0
            "format": format_score,
            "accuracy": accuracy,
            "visual": visual,
            "perception_sufficient": sufficient,
            "language_shortcut": shortcut,
            "description_missing": missing,
        }
    )


def test_sr1_batch_keeps_order_and_custom_weights() -> None:
    items = [case[0] for case in SR1_CASES[:3]]
    scores = sr1_reward(items, accuracy_weight=0.5, format_weight=0.0, visual_weight=0.25)
    # (accuracy, visual): (1, 1), (1, 0), (0, 1)
    assert [score["overall"] for score in scores] == pytest.approx([0.75, 0.5, 0.25])


def test_sr1_multiple_choice_reanswer_matches_option_text() -> None:
    problem = "What color is the ball?\nA. blue\nB. red"
    item = RewardInput(
        response=r"<description>A red ball.</description><think>Red is B.</think>\boxed{B}",
        ground_truth="B", problem=problem, response_length=9,
        reanswers=[r"<think>red</think>\boxed{red}"], description="A red ball.",
    )
    [score] = sr1_reward([item])
    assert (score["accuracy"], score["visual"]) == (1.0, 1.0)


def test_sr1_without_the_self_reward_stage_is_an_error_naming_the_sample() -> None:
    items = [_input(GOOD_RIGHT, [REANSWER_RIGHT]), _input(GOOD_RIGHT, [])]
    with pytest.raises(ValueError, match="sample 1 has a description but no re-answers.*see_think"):
        sr1_reward(items)


def test_sr1_invalid_weight_is_named() -> None:
    with pytest.raises(ValueError, match="'sr1': visual_weight must be a finite number"):
        sr1_reward([], visual_weight=float("nan"))


def test_see_think_ignores_reanswers() -> None:
    items = [
        _input(GOOD_RIGHT, [REANSWER_WRONG]),
        _input(GOOD_WRONG, [REANSWER_RIGHT]),
        _input(NO_DESCRIPTION_RIGHT, [], description=None),
    ]
    expected = [
        {"overall": 1.0, "format": 1.0, "accuracy": 1.0},
        {"overall": 0.1, "format": 1.0, "accuracy": 0.0},
        {"overall": 0.9, "format": 0.0, "accuracy": 1.0},
    ]
    for score, expected_score in zip(see_think_reward(items), expected, strict=True):
        assert score == pytest.approx(expected_score)


def test_see_think_with_zero_format_weight_is_accuracy() -> None:
    scores = see_think_reward([_input(NO_DESCRIPTION_RIGHT, [], description=None)], format_weight=0.0)
    assert scores == [{"overall": 1.0, "format": 0.0, "accuracy": 1.0}]


@pytest.mark.parametrize(
    ("field_name", "value", "message"),
    [
        ("response", None, "RewardInput.response must be a str"),
        ("ground_truth", 4, "RewardInput.ground_truth must be a str"),
        ("response_length", -1, "response_length must be an int >= 0"),
        ("reanswers", "oops", "reanswers must be a list of str"),
        ("description", 3, "description must be a str or None"),
    ],
)
def test_reward_input_validates_its_fields(field_name: str, value: object, message: str) -> None:
    fields = {"response": "r", "ground_truth": "g", "problem": "p", "response_length": 1}
    fields[field_name] = value
    with pytest.raises((TypeError, ValueError), match=message):
        RewardInput(**fields)  # type: ignore[arg-type]


def test_sr1_reward_with_the_paper_v2_tags():
    good = "<visual reasoning>A red ball.</visual reasoning><think>It is red.</think><answer>red</answer>"
    reanswer = "<think>The text says red.</think><answer>Red</answer>"
    [scores] = sr1_reward([_input(good, [reanswer, r"<think>x</think> \boxed{red}"])], tags="paper_v2")
    # The boxed re-answer has no <answer> block: wrong under paper_v2.
    assert (scores["format"], scores["accuracy"], scores["visual"]) == (1.0, 1.0, 0.5)
    [sr1_scores] = sr1_reward([_input(good, [reanswer])])  # the sr1 tags do not read it
    assert (sr1_scores["format"], sr1_scores["accuracy"]) == (0.0, 0.0)
    with pytest.raises(ValueError, match="tags='v3' is not one of sr1, paper_v2"):
        sr1_reward([_input(good, [reanswer])], tags="v3")
