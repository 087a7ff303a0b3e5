"""A rollout engine in a Ray worker process of its own (trainer.rollout_mode=one_step_off): it
generates the next step's batch while the FSDP ranks train on the current one, and takes new
weights, tagged with the version (the number of updates) they come from, between batches."""

from __future__ import annotations

import os

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from verl.workers.config import RankSetup, WorkerConfig
from verl.workers.rollout_host import RolloutHost, worker_device

ROLLOUT_WEIGHTS_DIR = "rollout"
ROLLOUT_WEIGHTS_FILE = "model.safetensors"


def rollout_weights_path(step_dir: str) -> str:
    """Where a checkpoint keeps the weights its in-flight batch is generated from."""
    return os.path.join(step_dir, ROLLOUT_WEIGHTS_DIR, ROLLOUT_WEIGHTS_FILE)


def save_rollout_weights(weights: dict[str, torch.Tensor], version: int, step_dir: str) -> None:
    """Writes `weights` (a published state dict, fetched from Ray's object store where this
    runs) with their version into the checkpoint folder `step_dir`."""
    path = rollout_weights_path(step_dir)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_file(weights, path, metadata={"version": str(version)})


class RolloutWorker(RolloutHost):
    """One engine process. `rank` (from RANK) numbers it among the rollout processes: engine r
    samples with seed + r, as data-parallel engines of the colocated layout do."""

    def __init__(self, config: WorkerConfig, setup: RankSetup):
        self.config = config
        self.setup = setup
        self.rank = int(os.environ["RANK"])
        self.device = worker_device(setup.device)

    def init_model(self) -> str:
        """Builds the engine on the model folder; returns what it built, for the trainer to print."""
        torch.manual_seed(self.setup.seed)
        self.build_rollout()
        return f"{self.config.rollout.name} rollout engine on {self.device}"

    def load_weights(self, weights: dict[str, torch.Tensor], version: int) -> dict[str, float]:
        """New policy weights (Ray resolves the published reference into `weights` here) tagged
        with `version`; returns the bytes loaded (perf/sync_bytes) and the version now held."""
        loaded = self.rollout.load_weights(weights.items())
        return {"bytes": float(loaded), "version": float(version)}

    def load_weights_file(self, step_dir: str) -> int:
        """The weights a checkpoint's in-flight batch was generated from (`save_rollout_weights`);
        returns their version."""
        path = rollout_weights_path(step_dir)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"checkpoint {step_dir} has no {ROLLOUT_WEIGHTS_DIR}/{ROLLOUT_WEIGHTS_FILE}")
        with safe_open(path, framework="pt") as f:
            version = int(f.metadata()["version"])
        self.load_weights(load_file(path), version)
        return version
