"""The three graders on the case table of benchmarks/grader_cases.py, and the grader knob of the rewards."""

import importlib.util
from pathlib import Path

import pytest

from verl.rewards import RewardInput
from verl.rewards.grading import DEFAULT_GRADER, GRADERS, get_grader
from verl.rewards.r1v import cot_reward, r1v_reward
from verl.rewards.sr1 import see_think_reward, sr1_reward

_CASES_FILE = Path(__file__).resolve().parents[2] / "benchmarks" / "grader_cases.py"


def _case_module():
    spec = importlib.util.spec_from_file_location("grader_cases", _CASES_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CASES = _case_module().CASES

# Where each grader disagrees with the table's expected verdict: (given, ground truth). Measured with
# mathruler 0.1.0 and math-verify 0.9.0 (the pinned versions); a change here is a behaviour change.
KNOWN_MISSES = {
    "builtin": {(r"x \in [1, 3]", "[1,3]"), ("1.5 million", "1500000")},
    "mathruler": {
        (r"\{2, 1\}", r"\{1,2\}"), ("12 square units", "12"), ("B.", "B"), ("B) dog", "B"), ("dog", "B"),
        ("two", "2"), ("Five", "5"), ("The Eiffel Tower.", "eiffel tower"), (r"3\times10^{3}", "3000"),
        (r"x \in [1, 3]", "[1,3]"), ("1.5 million", "1500000"),
    },
    "math_verify": {
        ("1e3", "1000"), ("2/4", "1/2"), ("B.", "B"), ("B) dog", "B"), ("dog", "B"), ("two", "2"),
        ("Five", "5"), ("The Eiffel Tower.", "eiffel tower"), ("1.5 million", "1500000"),
    },
}


@pytest.mark.parametrize("name", list(GRADERS))
def test_each_grader_misses_exactly_its_known_cases(name: str) -> None:
    grade = get_grader(name)
    misses = {
        (given, truth)
        for _, given, truth, expected, problem in CASES
        if grade(f"<think>t</think> \\boxed{{{given}}}", truth, problem or None) != expected
    }
    assert misses == KNOWN_MISSES[name]


def test_default_grader_is_right_on_the_most_cases() -> None:
    right = {name: len(CASES) - len(misses) for name, misses in KNOWN_MISSES.items()}
    assert max(right, key=right.get) == DEFAULT_GRADER


@pytest.mark.parametrize("name", list(GRADERS))
def test_integers_are_exact_in_every_grader(name: str) -> None:
    grade = get_grader(name)
    assert grade(r"\boxed{12345}", "12345") is True
    for given, truth in (("12346", "12345"), ("10001", "10000"), ("99999", "100000")):
        assert grade(f"\\boxed{{{given}}}", truth) is False, (given, truth)


@pytest.mark.parametrize("name", list(GRADERS))
def test_every_grader_needs_a_box(name: str) -> None:
    assert get_grader(name)("the answer is 5", "5") is False
    assert get_grader(name)(r"\boxed{5", "5") is False  # never closed


def test_builtin_integer_against_expression_is_exact() -> None:
    grade = get_grader("builtin")
    assert grade(r"\boxed{10^4}", "10000") is True
    assert grade(r"\boxed{10^4+1}", "10000") is False  # sympy path: no tolerance for an integer
    assert grade(r"\boxed{0.33333}", "1/3") is True  # non-integers keep the relative tolerance


def test_unknown_grader_is_named() -> None:
    with pytest.raises(ValueError, match="unknown grader 'exact'.*builtin, mathruler, math_verify"):
        get_grader("exact")


@pytest.mark.parametrize("reward", [sr1_reward, see_think_reward, r1v_reward, cot_reward])
def test_rewards_grade_with_the_chosen_grader(reward) -> None:
    # "two" vs 2: the builtin grader reads number words, mathruler does not.
    response = "<description>d</description> <think>t</think> \\boxed{two}"
    item = RewardInput(response=response, ground_truth="2", problem="q", response_length=5,
                       reanswers=[r"\boxed{2}"], description="d")
    assert reward([item], grader="builtin")[0]["accuracy"] == 1.0
    assert reward([item], grader="mathruler")[0]["accuracy"] == 0.0


def test_the_config_key_selects_the_grader_through_the_loader() -> None:
    from verl.rewards.loader import load_reward_function

    item = RewardInput(response=r"<think>t</think> \boxed{two}", ground_truth="2", problem="q", response_length=3)
    # reward.reward_function_kwargs.grader=... reaches the function as a keyword argument.
    assert load_reward_function("cot", {"grader": "mathruler"})([item])[0]["accuracy"] == 0.0
    assert load_reward_function("cot", {"grader": "builtin"})([item])[0]["accuracy"] == 1.0
