"""The rollout engine's side of a worker process, shared by both places an engine lives: a
training rank of the hybrid engine (`FSDPWorker`, trainer.rollout_mode=colocated) and a rollout
process of its own (`RolloutWorker`, one_step_off). Both answer the trainer's generation calls
through these methods, so the two modes sample through one code path."""

from __future__ import annotations

import dataclasses
import os

import torch

from verl.models.qwen_vl import resolve_dtype
from verl.protocol import DataProto
from verl.workers.config import RankSetup, WorkerConfig
from verl.workers.rollout import RolloutEngine, make_rollout_engine
from verl.workers.rollout.base import SamplingConfig
from verl.workers.rollout.batching import build_rollout_batch, requests_from_batch


def worker_device(wanted: str) -> torch.device:
    """The device of a worker process for trainer.device=`wanted` (auto | cuda | cpu). On CPU it
    also sets the process's torch threads to VERL_CPU_THREADS_PER_WORKER (default 1): Ray gives
    each CPU worker a slice of the cores, and more threads only contend."""
    if wanted == "cuda" or (wanted == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", 0)  # Ray exposes exactly one GPU per worker
    torch.set_num_threads(max(1, int(os.environ.get("VERL_CPU_THREADS_PER_WORKER", "1"))))
    return torch.device("cpu")


class RolloutHost:
    """Mixin: holds `self.rollout` (built by `build_rollout`) and serves generation. The class
    using it sets `config`, `setup`, `device` and `rank` (its rank among the rollout engines'
    processes)."""

    config: WorkerConfig
    setup: RankSetup
    device: torch.device
    rank: int
    rollout: RolloutEngine

    def build_rollout(self) -> None:
        self.rollout = make_rollout_engine(
            self.config.rollout.name, self.config.actor.model.model_path, **self._engine_kwargs()
        )
        self.rollout_generate_calls = 0
        self.rollout_awake = True

    def _engine_kwargs(self) -> dict:
        rollout = self.config.rollout
        dtype = resolve_dtype(rollout.dtype, self.device)
        kwargs = {
            "min_pixels": self.setup.min_pixels,
            "max_pixels": self.setup.max_pixels,
            "dtype": {torch.float32: "float32", torch.bfloat16: "bfloat16"}[dtype],
        }
        if rollout.name == "hf":
            return {**kwargs, "max_batch_size": rollout.max_batch_size, "device": str(self.device)}
        return {
            **kwargs,
            "max_model_len": rollout.max_model_len or self.setup.longest_row,
            "gpu_memory_utilization": rollout.gpu_memory_utilization,
            "enforce_eager": rollout.enforce_eager,
            "max_num_batched_tokens": rollout.max_num_batched_tokens,
            "enable_chunked_prefill": rollout.enable_chunked_prefill,
            "tensor_parallel_size": rollout.tensor_parallel_size,
            "free_cache_engine": rollout.free_cache_engine,
            "seed": rollout.seed,
            "cpu_kv_cache_space_gib": rollout.cpu_kvcache_space_gib,
            "max_images_per_prompt": rollout.limit_images,
        }

    def generate_sequences(self, prompts: DataProto, sampling: SamplingConfig, max_response_length: int) -> DataProto:
        """n responses per prompt row through the rollout engine, in one engine call."""
        # Ranks of one tensor-parallel engine share inputs and seed; data-parallel engines differ.
        dp_rank = self.rank // self.config.rollout.tensor_parallel_size
        sampling = dataclasses.replace(sampling, seed=None if sampling.seed is None else sampling.seed + dp_rank)
        self._set_rollout_awake(True)
        outputs = self.rollout.generate(requests_from_batch(prompts), sampling)
        self.rollout_generate_calls += 1
        return build_rollout_batch(prompts, outputs, max_response_length, prompts.meta_info["pad_token_id"])

    def num_generate_calls(self) -> int:
        return self.rollout_generate_calls

    def _set_rollout_awake(self, awake: bool) -> None:
        """The engine sleeps (frees its GPU memory) while the actor trains, and wakes for weight
        sync and generation; with free_cache_engine off, or on CPU, both are no-ops."""
        if awake != self.rollout_awake:
            (self.rollout.wake_up if awake else self.rollout.sleep)()
            self.rollout_awake = awake

    def sleep_rollout(self) -> None:
        """Generation (and the self-reward pass) is over for this step: the engine frees its GPU
        memory for the training passes (the trainer calls this between sampling and log-probs;
        the next weight sync or generation wakes it)."""
        self._set_rollout_awake(False)
