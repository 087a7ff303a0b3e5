"""Rewards: the answer grader, the built-in reward functions and the reward-function loader.

Contract of a reward function (batched, called on the driver)::

    fn(reward_inputs: list[RewardInput], **config_kwargs) -> list[dict[str, float]]

one dict per input, each with ``overall`` (the scalar reward) plus named components, all logged
separately. ``config_kwargs`` come from ``reward.reward_function_kwargs``; each function declares
them as explicit keyword parameters with defaults.

Built-ins (``verl.rewards.loader.BUILTIN_REWARD_FUNCTIONS``): ``sr1`` (Vision-SR1 self-reward),
``see_think`` (same format, no visual reward), ``r1v`` (Vision-R1 / EasyR1 r1v), ``cot``.
"""

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["RewardFunction", "RewardInput", "check_weights"]


@dataclass
class RewardInput:
    """Everything a reward function may look at for one sampled response."""

    response: str
    """The decoded response (special tokens removed)."""
    ground_truth: str
    """The dataset answer."""
    problem: str
    """The question text without the ``<image>`` placeholder (multiple-choice options included)."""
    response_length: int
    """Number of response tokens (EOS included when generated)."""
    reanswers: list[str] = field(default_factory=list)
    """The self-reward's text-only re-answers of this response; empty when that stage did not run."""
    description: str | None = None
    """The extracted perception (``<description>`` text); None when the response has none."""

    def __post_init__(self) -> None:
        for name in ("response", "ground_truth", "problem"):
            value = getattr(self, name)
            if not isinstance(value, str):
                raise TypeError(
                    f"RewardInput.{name} must be a str, got {type(value).__name__}: {value!r:.200}"
                )
        length = self.response_length
        if isinstance(length, bool) or not isinstance(length, numbers.Integral) or length < 0:
            raise ValueError(f"RewardInput.response_length must be an int >= 0, got {length!r}")
        self.response_length = int(length)
        if not isinstance(self.reanswers, list) or not all(isinstance(text, str) for text in self.reanswers):
            raise TypeError(f"RewardInput.reanswers must be a list of str, got {self.reanswers!r:.200}")
        if self.description is not None and not isinstance(self.description, str):
            raise TypeError(
                f"RewardInput.description must be a str or None, got {type(self.description).__name__}"
            )


RewardFunction = Callable[[list[RewardInput]], list[dict[str, float]]]
"""A reward function with its config keyword arguments already bound."""


def check_weights(function_name: str, **weights: float) -> None:
    """Raise a ValueError naming the reward function and weight unless every weight is a finite number."""
    for name, value in weights.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(
                f"reward function {function_name!r}: {name} must be a finite number, got {value!r}"
            )
