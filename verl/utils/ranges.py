"""Allowed values of config fields, checked before anything starts.

A config dataclass lists its numeric fields' ranges in a class attribute
`RANGES: ClassVar[dict[str, Range]]` and its choice fields' valid values in
`CHOICES: ClassVar[dict[str, Choices]]` (for a list field, every item must be one of them);
`check_ranges` walks a config (nested dataclasses included) and raises ValueError naming the
first dotted key whose value is not allowed, and the values that are. Every float, listed or
not, must be finite: NaN passes every comparison and would slip through. Checks that relate two
fields stay with the config that owns both (e.g. `PPOConfig.validate`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection
from dataclasses import dataclass, fields, is_dataclass
from typing import Any


@dataclass(frozen=True)
class Range:
    """low < / <= value < / <= high (None: unbounded), or one of the `also` sentinels
    (e.g. -1 for "off", None for "default")."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    also: tuple[Any, ...] = ()

    def holds(self, value: Any) -> bool:
        if any(value is sentinel or (sentinel is not None and value == sentinel) for sentinel in self.also):
            return True
        if value is None or isinstance(value, bool):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        if self.high is not None and (value >= self.high if self.high_open else value > self.high):
            return False
        return True

    def describe(self) -> str:
        if self.low is not None and self.high is not None:
            text = f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
        elif self.low is not None:
            text = f"{'>' if self.low_open else '>='} {self.low:g}"
        elif self.high is not None:
            text = f"{'<' if self.high_open else '<='} {self.high:g}"
        else:
            text = "any number"
        sentinels = ["null" if s is None else repr(s) for s in self.also]
        return text + "".join(f" or {s}" for s in sentinels)


POSITIVE = Range(0, low_open=True)
NON_NEGATIVE = Range(0)
AT_LEAST_ONE = Range(1)
FRACTION = Range(0, 1)  # [0, 1]
PROBABILITY = Range(0, 1, low_open=True)  # (0, 1]: a top_p or a memory share of 0 is never meant
OFF_OR_AT_LEAST_ONE = Range(1, also=(-1,))
DEFAULT_OR_AT_LEAST_ONE = Range(1, also=(None,))


Choices = Collection[str] | Callable[[], Collection[str]]
"""The valid values of a choice field: a collection, or a function returning one when the values
come from a table that code may extend (e.g. a registry of estimators, read at check time)."""


def valid_choices(choices: Choices) -> tuple[str, ...]:
    return tuple(choices() if callable(choices) else choices)


def check_ranges(config: Any, prefix: str = "") -> None:
    """Raises ValueError `key=value must be <range>` for the first value out of range, or
    `key=value is not one of <valid values>` for the first value that is not a valid choice."""
    ranges: dict[str, Range] = getattr(type(config), "RANGES", {})
    choices: dict[str, Choices] = getattr(type(config), "CHOICES", {})
    for f in fields(config):
        key, value = prefix + f.name, getattr(config, f.name)
        if is_dataclass(value):
            check_ranges(value, key + ".")
            continue
        values = tuple(value.values()) if isinstance(value, dict) else value if isinstance(value, (tuple, list)) else (value,)
        for item in values:
            if isinstance(item, float) and not math.isfinite(item):
                raise ValueError(f"{key}={value!r} must be a finite number")
        rule = ranges.get(f.name)
        if rule is not None and not all(rule.holds(item) for item in values):
            raise ValueError(f"{key}={value!r} must be {rule.describe()}")
        if f.name in choices:
            valid = valid_choices(choices[f.name])
            wrong = [item for item in values if item not in valid]
            if wrong:
                which = "" if wrong == [value] else f": {wrong[0]!r}"
                raise ValueError(f"{key}={value!r}{which} is not one of {', '.join(valid)}")
