import textwrap
from pathlib import Path

import numpy as np
import pytest

from verl.rewards import RewardInput
from verl.rewards.loader import (
    BUILTIN_REWARD_FUNCTIONS,
    RewardFunctionError,
    RewardTimeoutError,
    load_reward_function,
)
from verl.rewards.sr1 import sr1_reward

GOOD_SR1 = r"<description>A red ball.</description><think>It is red.</think>\boxed{red}"


def _inputs(count: int) -> list[RewardInput]:
    return [
        RewardInput(
            response=f"response {index}", ground_truth=str(index), problem=f"problem number {index}",
            response_length=index + 1,
        )
        for index in range(count)
    ]


def _write(directory: Path, source: str, name: str = "my_reward.py") -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(source))
    return path


def test_builtin_by_name_binds_kwargs() -> None:
    item = RewardInput(
        response=GOOD_SR1, ground_truth="red", problem="Color?", response_length=5,
        reanswers=[r"\boxed{blue}"], description="A red ball.",
    )
    reward = load_reward_function("sr1", {"visual_weight": 0.5, "format_weight": 0.0})
    assert reward.name == "sr1"
    assert reward([item]) == sr1_reward([item], visual_weight=0.5, format_weight=0.0)
    assert reward([item])[0]["overall"] == pytest.approx(0.9)


def test_every_builtin_loads_with_its_defaults() -> None:
    for name in BUILTIN_REWARD_FUNCTIONS:
        assert load_reward_function(name, {}).function is BUILTIN_REWARD_FUNCTIONS[name]


def test_function_from_file_with_kwargs(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """
        def length_reward(reward_inputs, scale: float = 1.0):
            return [
                {"overall": scale * item.response_length, "length": item.response_length}
                for item in reward_inputs
            ]
        """,
    )
    reward = load_reward_function(f"{path}:length_reward", {"scale": 0.5})
    assert reward(_inputs(3)) == [
        {"overall": 0.5, "length": 1.0},
        {"overall": 1.0, "length": 2.0},
        {"overall": 1.5, "length": 3.0},
    ]
    assert reward([]) == []


def test_relative_path_and_var_keyword(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write(tmp_path, "def score(reward_inputs, **options):\n    return [{'overall': options['bonus']}]\n")
    monkeypatch.chdir(tmp_path)
    reward = load_reward_function("my_reward.py:score", {"bonus": 2})
    assert reward(_inputs(1)) == [{"overall": 2.0}]


def test_same_file_name_in_two_folders_stays_separate(tmp_path: Path) -> None:
    for folder, value in (("a", 1), ("b", 2)):
        (tmp_path / folder).mkdir()
        _write(tmp_path / folder, f"def score(reward_inputs):\n    return [{{'overall': {value}}}]\n", "reward.py")
    first = load_reward_function(f"{tmp_path / 'a' / 'reward.py'}:score")
    second = load_reward_function(f"{tmp_path / 'b' / 'reward.py'}:score")
    assert (first(_inputs(1)), second(_inputs(1))) == ([{"overall": 1.0}], [{"overall": 2.0}])


def test_numbers_are_converted_to_float(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """
        import numpy as np
        def score(reward_inputs):
            return [{"overall": np.float32(0.5), "format": True, "count": np.int64(3)} for _ in reward_inputs]
        """,
    )
    [result] = load_reward_function(f"{path}:score")(_inputs(1))
    assert result == {"overall": 0.5, "format": 1.0, "count": 3.0}
    assert all(type(value) is float for value in result.values())
    assert np.float32(0.5) == result["overall"]


def test_unknown_builtin_lists_the_builtins() -> None:
    with pytest.raises(ValueError, match="unknown reward function 'sr2': built-ins are cot, r1v, see_think, sr1"):
        load_reward_function("sr2", {})


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.py"
    with pytest.raises(FileNotFoundError, match=f"reward function file not found: {missing}"):
        load_reward_function(f"{missing}:score", {})


def test_missing_function_lists_the_functions_found(tmp_path: Path) -> None:
    path = _write(tmp_path, "import math\ndef helper(x):\n    return x\ndef compute_score(inputs):\n    return []\n")
    expected = r"has no function 'score' in .*functions defined there: compute_score, helper"
    with pytest.raises(ValueError, match=expected):
        load_reward_function(f"{path}:score", {})


def test_file_without_function_name(tmp_path: Path) -> None:
    path = _write(tmp_path, "def compute_score(reward_inputs):\n    return []\n")
    expected = r"names no function; write '.*my_reward.py:<function>' \(functions in that file: compute_score\)"
    with pytest.raises(ValueError, match=expected):
        load_reward_function(str(path), {})


def test_file_that_fails_to_import(tmp_path: Path) -> None:
    path = _write(tmp_path, "import module_that_does_not_exist_anywhere\n")
    expected = "importing reward function file .*my_reward.py failed: ModuleNotFoundError"
    with pytest.raises(ImportError, match=expected):
        load_reward_function(f"{path}:score", {})


def test_unexpected_kwargs_are_named_with_the_accepted_ones() -> None:
    expected = "'r1v' does not accept accuracy_weight, visual_weight .*parameters are: format_weight"
    with pytest.raises(TypeError, match=expected):
        load_reward_function("r1v", {"visual_weight": 1.0, "accuracy_weight": 0.9})


def test_required_kwargs_without_value(tmp_path: Path) -> None:
    path = _write(tmp_path, "def score(reward_inputs, *, threshold):\n    return []\n")
    with pytest.raises(TypeError, match="requires threshold without a default"):
        load_reward_function(f"{path}:score", {})
    assert load_reward_function(f"{path}:score", {"threshold": 1}).kwargs == {"threshold": 1}


def test_reference_style_signature_is_rejected_with_the_contract(tmp_path: Path) -> None:
    reference_style = "def compute_score(predicts, ground_truths, questions, format_weight=0.1):\n    return []\n"
    path = _write(tmp_path, reference_style)
    expected = r"requires ground_truths, questions without a default.*list\[RewardInput\]"
    with pytest.raises(TypeError, match=expected):
        load_reward_function(f"{path}:compute_score", {})


def test_function_without_positional_parameter(tmp_path: Path) -> None:
    path = _write(tmp_path, "def score(*, weight=1.0):\n    return []\n")
    with pytest.raises(TypeError, match="takes no positional parameter for the inputs"):
        load_reward_function(f"{path}:score", {})


def test_raising_function_names_the_failing_sample(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """
        def score(reward_inputs):
            return [{"overall": 1.0 / (int(item.ground_truth) - 2)} for item in reward_inputs]
        """,
    )
    reward = load_reward_function(f"{path}:score", {})
    with pytest.raises(RewardFunctionError) as raised:
        reward(_inputs(4))
    message = str(raised.value)
    assert f"reward function '{path}:score' raised ZeroDivisionError" in message
    assert "first failing sample: index 2 of 4, problem 'problem number 2'" in message
    assert isinstance(raised.value.__cause__, ZeroDivisionError)


def test_batch_dependent_failure_is_reported_as_such(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """
        def score(reward_inputs):
            if len(reward_inputs) > 2:
                raise MemoryError("batch too big")
            return [{"overall": 0.0} for _ in reward_inputs]
        """,
    )
    expected = "(?s)MemoryError: batch too big.*every one of the 3 samples scores"
    with pytest.raises(RewardFunctionError, match=expected):
        load_reward_function(f"{path}:score", {})(_inputs(3))


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            "return [{'accuracy': 1.0} for _ in reward_inputs]",
            r"result for sample 0 .* has no 'overall' key \(keys: \['accuracy'\]\)",
        ),
        (
            "return [{'overall': float('nan')} for _ in reward_inputs]",
            r"'overall' of sample 0 .* is nan \(float\); scores must be finite numbers",
        ),
        ("return [{'overall': 1.0, 'x': -float('inf')}]*2", r"'x' of sample 0 .* is -inf \(float\)"),
        (
            "return [{'overall': '1.0'} for _ in reward_inputs]",
            r"'overall' of sample 0 .* is '1.0' \(str\); scores must be finite numbers",
        ),
        ("return [{'overall': None}] * 2", r"is None \(NoneType\); scores must be finite numbers"),
        ("return [{'overall': [1.0]}] * 2", r"is \[1.0\] \(list\); scores must be finite numbers"),
        ("return [{'overall': 1.0}]", r"returned 1 results for 2 inputs"),
        ("return {'overall': 1.0}", r"returned a dict; expected a list of dicts"),
        ("return None", r"returned a NoneType; expected a list of dicts"),
        ("return [1.0 for _ in reward_inputs]", r"result for sample 0 .* is a float, not a dict"),
        (
            "return [{'overall': 1.0, **({'extra': 1.0} if i else {})} for i, _ in enumerate(reward_inputs)]",
            r"result for sample 1 .* has keys \['extra', 'overall'\] but sample 0 has \['overall'\]",
        ),
    ],
)
def test_invalid_results_are_clear_errors(tmp_path: Path, body: str, message: str) -> None:
    path = _write(tmp_path, f"def score(reward_inputs):\n    {body}\n")
    with pytest.raises(RewardFunctionError, match=message):
        load_reward_function(f"{path}:score", {})(_inputs(2))


def test_sr1_error_goes_through_the_wrapper_with_its_sample() -> None:
    items = _inputs(2)
    items[1].description = "a perception that was never re-answered"
    expected = "(?s)sample 1 has a description but no re-answers.*index 1 of 2"
    with pytest.raises(RewardFunctionError, match=expected):
        load_reward_function("sr1", {})(items)


@pytest.mark.parametrize("spec", ["", "   ", None])
def test_empty_spec(spec: object) -> None:
    with pytest.raises(ValueError, match="reward function spec must be"):
        load_reward_function(spec, {})  # type: ignore[arg-type]


@pytest.mark.timeout(30)
def test_a_reward_function_that_never_returns_is_stopped_naming_it_and_the_batch(tmp_path: Path) -> None:
    import time

    path = _write(
        tmp_path,
        """
        import time

        def stuck(reward_inputs):
            while True:
                time.sleep(0.05)
        """,
    )
    reward = load_reward_function(f"{path}:stuck", {}, timeout_s=0.5)
    start = time.monotonic()
    with pytest.raises(RewardTimeoutError) as raised:
        reward(_inputs(3), batch="training step 7")
    elapsed = time.monotonic() - start
    message = str(raised.value)
    assert f"reward function '{path}:stuck'" in message
    assert "training step 7 (3 responses)" in message and "0.5 s" in message and "reward.timeout_s" in message
    assert 0.5 <= elapsed < 2.0  # one timeout, no sample-by-sample retry of a stuck function


def test_a_fast_reward_function_is_unaffected_by_the_timeout(tmp_path: Path) -> None:
    path = _write(tmp_path, "def ok(reward_inputs):\n    return [{'overall': 1.0} for _ in reward_inputs]\n")
    assert load_reward_function(f"{path}:ok", {}, timeout_s=5.0)(_inputs(2)) == [{"overall": 1.0}] * 2


def test_an_error_in_a_timed_call_is_still_traced_to_its_sample(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """
        def picky(reward_inputs):
            return [{"overall": 1.0 / (item.response_length - 2)} for item in reward_inputs]
        """,
    )
    with pytest.raises(RewardFunctionError, match=r"(?s)raised ZeroDivisionError: .*\(on validation step 3\).*index 1 of 3"):
        load_reward_function(f"{path}:picky", {}, timeout_s=5.0)(_inputs(3), batch="validation step 3")


@pytest.mark.timeout(30)
def test_the_timeout_also_stops_a_call_outside_the_main_thread(tmp_path: Path) -> None:
    import threading
    import time

    path = _write(tmp_path, "import time\n\ndef stuck(reward_inputs):\n    time.sleep(3600)\n")
    reward = load_reward_function(f"{path}:stuck", {}, timeout_s=0.5)
    caught: list[BaseException] = []

    def call() -> None:
        try:
            reward(_inputs(2), batch="training step 1")
        except RewardTimeoutError as error:
            caught.append(error)

    start = time.monotonic()
    worker = threading.Thread(target=call)
    worker.start()
    worker.join(10)
    assert len(caught) == 1 and "training step 1 (2 responses)" in str(caught[0])
    assert time.monotonic() - start < 3


@pytest.mark.timeout(30)
def test_a_grader_with_its_own_sigalrm_limit_keeps_it_and_except_exception_cannot_swallow_the_timeout(
    tmp_path: Path,
) -> None:
    """The driver calls rewards in its main thread, where per-sample SIGALRM limits (math_verify's)
    work; a function that catches every Exception and retries still stops at reward.timeout_s."""
    import time

    path = _write(
        tmp_path,
        """
        import signal, time

        def alarm_then_stubborn(reward_inputs):
            def expired(signum, frame):
                raise TimeoutError("per-sample limit")
            signal.signal(signal.SIGALRM, expired)
            signal.setitimer(signal.ITIMER_REAL, 0.1)
            try:
                time.sleep(5)
            except TimeoutError:
                pass  # the grader's own limit fired: the sample would be scored as wrong
            while True:
                try:
                    time.sleep(3600)
                except Exception:
                    continue
        """,
    )
    reward = load_reward_function(f"{path}:alarm_then_stubborn", {}, timeout_s=1.0)
    start = time.monotonic()
    with pytest.raises(RewardTimeoutError, match="did not return within 1 s"):
        reward(_inputs(1), batch="training step 2")
    assert time.monotonic() - start < 4
