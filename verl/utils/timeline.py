"""Where a step's time goes: each stage call as a span, per-step busy time of each side, and a
timeline file in the Chrome trace format (open it in chrome://tracing or ui.perfetto.dev).

Colocated, a step runs its stages one after another, so the step's wall time is about the
generation side's busy time plus the training side's. With one-step-off rollout the generation of
step k+1 runs while step k trains: its spans, logged with step k+1, lie beside step k's on the
timeline, and the trainer's wait for them (`wait_rollout`) is what generation did not hide.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

# Which side of the step each stage keeps busy. Generation: the rollout engine (sampling, the
# self-reward's re-prompt pass, ReMax's greedy pass). Training: forward/backward passes of the FSDP
# models. Driver: the controller's own CPU work between them. Sync: the weight hand-off.
SIDES: dict[str, tuple[str, ...]] = {
    "generation": ("gen", "self_reward", "remax_greedy"),
    "training": ("old_log_prob", "ref", "values", "pass2_log_prob", "update_critic", "update_actor"),
    "driver": ("reward", "adv"),
    "sync": ("sync", "publish"),
}
# The timeline's rows: the sides, the trainer waiting for a one-step-off batch (idle, not busy),
# the checkpoint save (after the step, not part of its wall time) and any stage of no known side.
LANES = (*SIDES, "waiting", "checkpoint", "other")
SIDE_OF = {stage: side for side, stages in SIDES.items() for stage in stages} | {
    "save_checkpoint": "checkpoint", "wait_rollout": "waiting",
}
TIMELINE_FILE = "timeline.json"


@dataclass(frozen=True)
class Span:
    """One stage call: its name, when it started (seconds since the epoch) and how long it ran."""

    name: str
    start_s: float
    duration_s: float


class StageTimes(dict):
    """Seconds per stage name (summed over calls; the `timing_s/*` metrics) and every call's span
    in order (the timeline)."""

    def __init__(self):
        super().__init__()
        self.spans: list[Span] = []

    def add(self, name: str, start_s: float, duration_s: float) -> None:
        self[name] = self.get(name, 0.0) + duration_s
        self.spans.append(Span(name, start_s, duration_s))


@contextmanager
def timed(name: str, timing: dict[str, float]) -> Iterator[None]:
    """Adds the body's duration to `timing[name]`; a StageTimes also keeps the span."""
    start_s, start = time.time(), time.perf_counter()
    yield
    duration = time.perf_counter() - start
    if isinstance(timing, StageTimes):
        timing.add(name, start_s, duration)
    else:
        timing[name] = timing.get(name, 0.0) + duration


def busy_metrics(timing: dict[str, float], wall_s: float) -> dict[str, float]:
    """The step's wall time and each side's busy seconds (stages of no listed side count as
    `other`); `generation_share` is the generation side's part of the wall time."""
    busy = {side: 0.0 for side in (*SIDES, "other")}
    for stage, seconds in timing.items():
        side = SIDE_OF.get(stage, "other")
        if side != "waiting":
            busy[side if side in busy else "other"] += seconds
    metrics = {f"timing_s/{side}_busy": seconds for side, seconds in busy.items()}
    metrics["timing_s/step_wall"] = wall_s
    metrics["timing_s/generation_share"] = busy["generation"] / wall_s if wall_s > 0 else 0.0
    return metrics


class Timeline:
    """The run's stage spans as a Chrome trace: one complete event ("ph": "X") per stage call, on
    one row (thread) per side, with its step in `args`. Rewritten whole after each step (write to
    a temporary file, then rename), so the file is always valid JSON; a resumed run keeps the
    events of steps before the one it restarts from."""

    def __init__(self, run_dir: str):
        self.path = os.path.join(run_dir, TIMELINE_FILE)
        self.events: list[dict] = []
        if os.path.isfile(self.path):
            try:
                with open(self.path) as f:
                    self.events = [e for e in json.load(f)["traceEvents"] if e.get("ph") == "X"]
            except (ValueError, KeyError, TypeError):  # a torn or foreign file: start a new timeline
                self.events = []

    def drop_from(self, step: int) -> None:
        self.events = [event for event in self.events if event["args"]["step"] < step]

    def add_step(self, step: int, spans: list[Span]) -> None:
        for span in spans:
            side = SIDE_OF.get(span.name, "other")
            self.events.append({
                "name": span.name, "cat": side, "ph": "X", "pid": 0, "tid": self._lane(side),
                "ts": round(span.start_s * 1e6), "dur": round(span.duration_s * 1e6), "args": {"step": step},
            })

    def write(self) -> None:
        names = [
            {"name": "thread_name", "ph": "M", "pid": 0, "tid": self._lane(side), "args": {"name": side}}
            for side in LANES
        ]
        process = {"name": "process_name", "ph": "M", "pid": 0, "tid": 0, "args": {"name": "trainer stages"}}
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"traceEvents": [process, *names, *self.events], "displayTimeUnit": "ms"}, f)
        os.replace(tmp, self.path)

    @staticmethod
    def _lane(side: str) -> int:
        return LANES.index(side)
