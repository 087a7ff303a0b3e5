"""Metric sinks: console and a JSONL file always; wandb and tensorboard when configured."""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any

SINKS = ("console", "file", "wandb", "tensorboard")


class Tracker:
    def __init__(self, backends: list[str], project: str, experiment: str, log_dir: str, config: dict[str, Any]):
        unknown = set(backends) - set(SINKS)
        if unknown:
            raise ValueError(f"trainer.logger has unknown backends {sorted(unknown)}; valid: {', '.join(SINKS)}")
        self.backends = set(backends) | {"file"}
        os.makedirs(log_dir, exist_ok=True)
        self.metrics_path = os.path.join(log_dir, "metrics.jsonl")
        self._file = open(self.metrics_path, "a")
        self._wandb = None
        self._tensorboard = None
        if "wandb" in self.backends:
            import wandb

            self._wandb = wandb.init(project=project, name=experiment, config=config)
        if "tensorboard" in self.backends:
            from torch.utils.tensorboard import SummaryWriter

            self._tensorboard = SummaryWriter(os.path.join(log_dir, "tensorboard"))

    def drop_rows_from(self, step: int) -> int:
        """Removes metrics.jsonl rows of `step` and later (and a torn last line), so a run that
        resumes from checkpoint step-1 logs every step once; the removed rows are appended to
        metrics.jsonl.superseded. Returns how many rows were removed."""
        self._file.close()
        kept, dropped = [], []
        with open(self.metrics_path) as f:
            for line in f:
                try:
                    row_step = json.loads(line)["step"]
                except (ValueError, KeyError, TypeError):
                    dropped.append(line if line.endswith("\n") else line + "\n")
                    continue
                (kept if row_step < step else dropped).append(line if line.endswith("\n") else line + "\n")
        if dropped:
            with open(self.metrics_path + ".superseded", "a") as f:
                f.writelines(dropped)
            tmp = self.metrics_path + ".tmp"
            with open(tmp, "w") as f:
                f.writelines(kept)
            os.replace(tmp, self.metrics_path)
            print(f"{self.metrics_path}: moved {len(dropped)} row(s) of step >= {step} (logged after the "
                  "checkpoint this run starts from) to metrics.jsonl.superseded", flush=True)
        self._file = open(self.metrics_path, "a")
        return len(dropped)

    def log(self, metrics: dict[str, float], step: int) -> None:
        clean = {k: (float(v) if isinstance(v, (int, float)) else v) for k, v in metrics.items()}
        self._file.write(json.dumps({"step": step, "time": time.time(), **clean}, allow_nan=True) + "\n")
        self._file.flush()
        if "console" in self.backends:
            print(format_metrics(step, clean), flush=True)
        if self._wandb is not None:
            self._wandb.log(clean, step=step)
        if self._tensorboard is not None:
            for key, value in clean.items():
                if isinstance(value, float) and math.isfinite(value):
                    self._tensorboard.add_scalar(key, value, step)

    def close(self) -> None:
        self._file.close()
        if self._wandb is not None:
            self._wandb.finish()
        if self._tensorboard is not None:
            self._tensorboard.close()


def format_metrics(step: int, metrics: dict[str, Any]) -> str:
    parts = [f"{k}:{v:.4g}" if isinstance(v, float) else f"{k}:{v}" for k, v in sorted(metrics.items())]
    return f"step:{step} - " + " - ".join(parts)
