"""Load a reward function by built-in name or ``path/to/file.py:function`` and guard its calls.

Configuration errors are raised at load time (missing file or function, keyword arguments the
function does not take); the returned ``LoadedRewardFunction`` then checks every call: a raising
function is re-run sample by sample to name the first sample that fails, and its results must be
one dict per input with ``overall``, the same keys for every sample and finite numbers only.
With a time limit (``timeout_s``, always set in training and scoring), the function runs in a
process of its own (``verl.rewards.reward_process``) that is killed at the limit, whatever the
function is doing; the error names the function and the batch.
"""

import hashlib
import importlib.util
import inspect
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from verl.rewards import RewardInput
from verl.rewards.reward_process import (
    RaisedInRewardProcess, RewardProcess, RewardProcessError, RewardProcessTimeout,
)
from verl.rewards.r1v import cot_reward, r1v_reward
from verl.rewards.sr1 import see_think_reward, sr1_reward

BUILTIN_REWARD_FUNCTIONS: dict[str, Callable[..., list[dict[str, float]]]] = {
    "sr1": sr1_reward,
    "see_think": see_think_reward,
    "r1v": r1v_reward,
    "cot": cot_reward,
}

_CONTRACT = "fn(reward_inputs: list[RewardInput], **kwargs) -> list[dict[str, float]]"
_TEXT_PREVIEW_CHARS = 200


class RewardFunctionError(RuntimeError):
    """A reward function raised, or returned something that is not one finite score dict per input."""


DEFAULT_TIMEOUT_S = 900.0
"""Default limit on one call of a reward function (training's `reward.timeout_s`, the scorer's
`--reward_timeout_s`): far above a rule-based batch, and a hang still ends with an error."""


class RewardTimeoutError(RewardFunctionError):
    """A reward function did not return within its time limit (its process was killed)."""


@dataclass(frozen=True)
class LoadedRewardFunction:
    """A reward function with its config keyword arguments bound; call it with the batch's inputs."""

    name: str
    """The spec it was loaded from: a built-in name or ``path/to/file.py:function``."""
    function: Callable[..., Any]
    kwargs: dict[str, Any] = field(default_factory=dict)
    timeout_s: float | None = None
    """Longest one call (one batch) may take (``reward.timeout_s``); None: no limit, and the
    function runs in the caller's process."""
    timeout_setting: str = "reward.timeout_s"
    """The setting that sets ``timeout_s``, named in the timeout error."""
    source: str | None = None
    """The spec the reward process resolves (a file spec with its absolute path, so a later change
    of working directory does not matter); None: ``name``."""
    _process: RewardProcess | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.timeout_s is not None:
            process = RewardProcess(resolve_function, self.source or self.name, self.kwargs)
            object.__setattr__(self, "_process", process)

    def __call__(self, reward_inputs: list[RewardInput], batch: str = "a batch") -> list[dict[str, float]]:
        """One dict of float scores (``overall`` + components) per input, in input order.
        ``batch`` says which batch this is in error messages (e.g. "training step 7")."""
        if not reward_inputs:
            return []
        try:
            results = self._call(reward_inputs, f"{batch} ({len(reward_inputs)} responses)")
        except RewardProcessTimeout as error:
            raise RewardTimeoutError(
                f"{error} ({self.timeout_setting}); its process (pid {error.pid}) was killed, and the run stops "
                "rather than wait forever"
            ) from None
        except RewardProcessError as error:
            raise RewardFunctionError(str(error)) from None
        except Exception as error:
            raise RewardFunctionError(self._describe_failure(reward_inputs, error, batch)) from error
        return self._validated(results, reward_inputs)

    def close(self) -> None:
        """Ends the reward process, if one runs (the next call would start another)."""
        if self._process is not None:
            self._process.close()

    def _call(self, reward_inputs: list[RewardInput], what: str) -> Any:
        if self._process is None:
            return self.function(reward_inputs, **self.kwargs)
        return self._process.call(reward_inputs, self.timeout_s, f"reward function {self.name!r} on {what}")

    def _describe_failure(self, reward_inputs: list[RewardInput], error: Exception, batch: str) -> str:
        """The error message, plus the first sample that also fails when scored alone."""
        error_type = error.type_name if isinstance(error, RaisedInRewardProcess) else type(error).__name__
        message = f"reward function {self.name!r} raised {error_type}: {error} (on {batch})"
        for index, item in enumerate(reward_inputs):
            try:
                self._call([item], f"sample {index} of {batch} alone")
            except (RewardProcessTimeout, RewardProcessError) as stopped:
                return f"{message}\n{stopped} while looking for the failing sample"
            except Exception:
                location = f"index {index} of {len(reward_inputs)}, {_describe_sample(item)}"
                return f"{message}\nfirst failing sample: {location}"
        return (
            f"{message}\nevery one of the {len(reward_inputs)} samples scores without error on its own; "
            "the failure depends on the batch"
        )

    def _validated(self, results: Any, reward_inputs: list[RewardInput]) -> list[dict[str, float]]:
        where = f"reward function {self.name!r}"
        if isinstance(results, (str, bytes, Mapping)) or not isinstance(results, Sequence):
            raise RewardFunctionError(
                f"{where} returned a {type(results).__name__}; expected a list of dicts ({_CONTRACT})"
            )
        if len(results) != len(reward_inputs):
            raise RewardFunctionError(
                f"{where} returned {len(results)} results for {len(reward_inputs)} inputs"
            )
        expected_keys: list[str] | None = None
        validated = []
        for index, (result, item) in enumerate(zip(results, reward_inputs)):
            if not isinstance(result, Mapping):
                raise RewardFunctionError(
                    f"{where}: result for {_sample(index, item)} is a {type(result).__name__}, not a dict"
                )
            keys = sorted(map(str, result))
            if "overall" not in result:
                raise RewardFunctionError(
                    f"{where}: result for {_sample(index, item)} has no 'overall' key (keys: {keys})"
                )
            if expected_keys is None:
                expected_keys = keys
            elif keys != expected_keys:
                raise RewardFunctionError(
                    f"{where}: result for {_sample(index, item)} has keys {keys} but sample 0 has "
                    f"{expected_keys}; every component is logged per key, so all samples need the same keys"
                )
            scores = {}
            for key, value in result.items():
                number = _finite_float_or_none(value)
                if number is None:
                    raise RewardFunctionError(
                        f"{where}: {key!r} of {_sample(index, item)} is {value!r:.100} "
                        f"({type(value).__name__}); scores must be finite numbers"
                    )
                scores[str(key)] = number
            validated.append(scores)
        return validated


def load_reward_function(
    spec: str, kwargs: Mapping[str, Any] | None = None, timeout_s: float | None = None,
    timeout_setting: str = "reward.timeout_s",
) -> LoadedRewardFunction:
    """The reward function named by ``spec`` with ``kwargs`` bound (checked against its signature)
    and each call limited to ``timeout_s`` seconds (None: no limit; ``timeout_setting`` is the
    setting a timeout error tells the user to raise).

    ``spec`` is a built-in name (see ``BUILTIN_REWARD_FUNCTIONS``) or ``path/to/file.py:function``
    (relative paths are relative to the working directory).
    """
    kwargs = dict(kwargs or {})
    function = resolve_function(spec)
    spec = spec.strip()
    _check_signature(spec, function, kwargs)
    source = spec
    if spec not in BUILTIN_REWARD_FUNCTIONS:
        path_text, _, function_name = spec.rpartition(":")
        source = f"{Path(path_text).expanduser().resolve()}:{function_name.strip()}"
    return LoadedRewardFunction(
        name=spec, function=function, kwargs=kwargs, timeout_s=timeout_s, timeout_setting=timeout_setting,
        source=source,
    )


def resolve_function(spec: str) -> Callable[..., Any]:
    """The function ``spec`` names (a built-in name or ``path/to/file.py:function``); raises
    naming what is wrong with the spec. The reward process calls it to find its function."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(
            f"reward function spec must be a built-in name or 'path/to/file.py:function', got {spec!r}"
        )
    spec = spec.strip()
    if spec in BUILTIN_REWARD_FUNCTIONS:
        return BUILTIN_REWARD_FUNCTIONS[spec]
    if ":" in spec:
        path_text, _, function_name = spec.rpartition(":")
        return _function_from_file(spec, Path(path_text).expanduser(), function_name.strip())
    if spec.endswith(".py"):
        functions = _functions_defined_in(_import_file(spec, Path(spec).expanduser()))
        raise ValueError(
            f"reward function spec {spec!r} names no function; write '{spec}:<function>' "
            f"(functions in that file: {', '.join(functions) or 'none'})"
        )
    raise ValueError(
        f"unknown reward function {spec!r}: built-ins are {', '.join(sorted(BUILTIN_REWARD_FUNCTIONS))}; "
        "a custom one is given as 'path/to/file.py:function'"
    )


def _function_from_file(spec: str, path: Path, function_name: str) -> Callable[..., Any]:
    module = _import_file(spec, path)
    function = getattr(module, function_name, None) if function_name else None
    if function is None or not callable(function):
        functions = _functions_defined_in(module)
        problem = "names no function" if not function_name else f"has no function {function_name!r} in {path}"
        raise ValueError(
            f"reward function spec {spec!r} {problem}; "
            f"functions defined there: {', '.join(functions) or 'none'}"
        )
    return function


def _import_file(spec: str, path: Path) -> ModuleType:
    if not path.is_file():
        raise FileNotFoundError(
            f"reward function file not found: {path} (resolved to {path.resolve()}) from spec {spec!r}"
        )
    resolved = path.resolve()
    # A unique, stable module name: two reward files called reward.py must not replace each other.
    digest = hashlib.sha1(str(resolved).encode()).hexdigest()[:12]
    module_name = f"verl_reward_function_{resolved.stem}_{digest}"
    module_spec = importlib.util.spec_from_file_location(module_name, resolved)
    if module_spec is None or module_spec.loader is None:
        raise ImportError(
            f"cannot import reward function file {resolved} (spec {spec!r}): not a Python module"
        )
    module = importlib.util.module_from_spec(module_spec)
    # Registered before running it so that dataclasses and pickling inside the file can find it.
    sys.modules[module_name] = module
    try:
        module_spec.loader.exec_module(module)
    except Exception as error:
        del sys.modules[module_name]
        raise ImportError(
            f"importing reward function file {resolved} failed: {type(error).__name__}: {error}"
        ) from error
    return module


def _functions_defined_in(module: ModuleType) -> list[str]:
    return sorted(
        name
        for name, value in vars(module).items()
        if inspect.isfunction(value) and value.__module__ == module.__name__
    )


def _check_signature(spec: str, function: Callable[..., Any], kwargs: dict[str, Any]) -> None:
    """The function must take the inputs as its first positional parameter and accept exactly ``kwargs``."""
    kind = inspect.Parameter
    try:
        parameters = list(inspect.signature(function).parameters.values())
    except (TypeError, ValueError) as error:
        raise TypeError(
            f"reward function {spec!r}: cannot read its signature ({error}); expected {_CONTRACT}"
        ) from error
    positional_kinds = (kind.POSITIONAL_ONLY, kind.POSITIONAL_OR_KEYWORD, kind.VAR_POSITIONAL)
    if not parameters or parameters[0].kind not in positional_kinds:
        raise TypeError(
            f"reward function {spec!r} takes no positional parameter for the inputs; expected {_CONTRACT}"
        )
    keyword_kinds = (kind.POSITIONAL_OR_KEYWORD, kind.KEYWORD_ONLY)
    keyword_parameters = [parameter for parameter in parameters[1:] if parameter.kind in keyword_kinds]
    accepted = [parameter.name for parameter in keyword_parameters]
    takes_any_keyword = any(parameter.kind is kind.VAR_KEYWORD for parameter in parameters)
    unexpected = sorted(str(name) for name in kwargs if name not in accepted)
    if unexpected and not takes_any_keyword:
        raise TypeError(
            f"reward function {spec!r} does not accept {', '.join(unexpected)} "
            f"(from reward.reward_function_kwargs); its keyword parameters are: {', '.join(accepted) or 'none'}"
        )
    unfillable = [
        parameter.name
        for parameter in parameters[1:]
        if parameter.default is kind.empty
        and (
            parameter.kind is kind.POSITIONAL_ONLY
            or (parameter in keyword_parameters and parameter.name not in kwargs)
        )
    ]
    if unfillable:
        raise TypeError(
            f"reward function {spec!r} requires {', '.join(unfillable)} without a default; set them in "
            f"reward.reward_function_kwargs (expected {_CONTRACT})"
        )


def _sample(index: int, item: RewardInput) -> str:
    return f"sample {index} ({_describe_sample(item)})"


def _describe_sample(item: RewardInput) -> str:
    return (
        f"problem {_preview(item.problem)}, ground truth {_preview(item.ground_truth)}, "
        f"response {_preview(item.response)}"
    )


def _preview(text: str) -> str:
    return repr(text if len(text) <= _TEXT_PREVIEW_CHARS else text[:_TEXT_PREVIEW_CHARS] + "...")


def _finite_float_or_none(value: Any) -> float | None:
    """float(value) for a finite real number (bools and numpy scalars included); None otherwise."""
    if isinstance(value, (str, bytes)) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None
