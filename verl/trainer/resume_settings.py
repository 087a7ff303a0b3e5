"""The settings that shape a run, recorded in every checkpoint and compared when a run resumes.

    global_step_N/run_settings.json   {"worker.rollout.n": 8, "data.seed": 1, ...,
                                       "lr_schedule_optimizer_steps": 120}

A resume that changes any recorded setting prints one line per change. A change that breaks what
the checkpoint's state means is refused unless the key is listed in
`trainer.resume_allow_changes`:
  - the data position: the sampler's saved (epoch, offset) counts rows of one data order, built
    from the training files, the data seed, shuffling and the rollout batch size;
  - the lr schedule: the scheduler's saved step is a point on a schedule whose shape is the
    scheduler kind, warm-up, floor and, for cosine or warm-up, its length in optimizer steps.
Other changes (the learning rate, rollout n, seeds of the model and sampling, a longer run on a
constant schedule) apply from the resumed step on.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from verl.trainer.config import LR_SCHEDULE, PPOConfig
from verl.trainer.config import RESUME_SETTINGS as BREAKS
from verl.utils.checkpoint import CheckpointError

SETTINGS_FILE = "run_settings.json"
# Keys that set how many optimizer steps the lr schedule spans.
SCHEDULE_LENGTH_KEYS = (
    "trainer.total_epochs", "trainer.max_steps", "data.rollout_batch_size", "worker.actor.global_batch_size",
    "worker.actor.ppo_epochs",
)
SCHEDULE_LENGTH = "lr_schedule_optimizer_steps"


@dataclass(frozen=True)
class SettingChange:
    key: str
    saved: Any
    now: Any
    breaks: str | None  # what the change breaks; None when it applies cleanly

    def line(self) -> str:
        """The line a resume prints for a change it goes on with."""
        text = f"resume changes {self.key}: {self.saved!r} -> {self.now!r}"
        if self.breaks is None:
            return text + " (applies from the resumed step on)"
        return text + f" (breaks {self.breaks}; allowed by trainer.resume_allow_changes)"


def _value(config: PPOConfig, key: str) -> Any:
    value: Any = config
    for part in key.split("."):
        value = getattr(value, part)
    return list(value) if isinstance(value, (list, tuple)) else value


def run_settings(config: PPOConfig, schedule_optimizer_steps: int) -> dict[str, Any]:
    """What a checkpoint records: every key of BREAKS, and the schedule's length."""
    return {**{key: _value(config, key) for key in BREAKS}, SCHEDULE_LENGTH: schedule_optimizer_steps}


def write_run_settings(step_dir: str, settings: dict[str, Any]) -> None:
    with open(os.path.join(step_dir, SETTINGS_FILE), "w") as f:
        json.dump(settings, f, indent=1)


def read_run_settings(step_dir: str) -> dict[str, Any] | None:
    """The recorded settings; None for a checkpoint written before they were recorded."""
    path = os.path.join(step_dir, SETTINGS_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def _schedule_uses_length(config: PPOConfig) -> bool:
    optim = config.worker.actor.optim
    return optim.lr_scheduler != "constant" or optim.lr_warmup_ratio > 0


def changes(saved: dict[str, Any], now: dict[str, Any], config: PPOConfig) -> list[SettingChange]:
    """The recorded settings that differ, each with what its change breaks. A change of the
    schedule's length breaks the schedule only when its shape depends on the length (cosine or
    warm-up); the keys that set the length then carry that."""
    length_breaks = saved.get(SCHEDULE_LENGTH) != now[SCHEDULE_LENGTH] and _schedule_uses_length(config)
    found = []
    for key, breaks in BREAKS.items():
        if key not in saved or saved[key] == now[key]:
            continue
        if breaks is None and length_breaks and key in SCHEDULE_LENGTH_KEYS:
            breaks = f"{LR_SCHEDULE} (it spans {saved[SCHEDULE_LENGTH]} -> {now[SCHEDULE_LENGTH]} optimizer steps)"
        found.append(SettingChange(key, saved[key], now[key], breaks))
    return found


def check_resume(step_dir: str, now: dict[str, Any], config: PPOConfig) -> list[SettingChange]:
    """Compares the settings `step_dir` recorded with this run's: prints one line per change and
    raises CheckpointError naming every breaking change not in trainer.resume_allow_changes. Returns
    the changes (the caller applies allowed data-position changes)."""
    saved = read_run_settings(step_dir)
    if saved is None:
        print(
            f"resume: {step_dir} records no {SETTINGS_FILE} (written before settings were recorded); changes to "
            "rollout n, batch sizes, seeds, data files and the lr schedule are not checked", flush=True,
        )
        return []
    allowed = set(config.trainer.resume_allow_changes)
    found = changes(saved, now, config)
    refused = [change for change in found if change.breaks is not None and change.key not in allowed]
    for change in found:
        if change not in refused:
            print(change.line(), flush=True)
    if refused:
        listing = "; ".join(f"{c.key}: {c.saved!r} -> {c.now!r} breaks {c.breaks}" for c in refused)
        keys = ",".join(c.key for c in refused)
        raise CheckpointError(
            f"resume from {step_dir} refused: {listing}. Restore the saved values, start a new run in another folder "
            f"(trainer.save_checkpoint_path), or accept the change with trainer.resume_allow_changes=[{keys}]"
        )
    return found
