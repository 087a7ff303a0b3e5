"""The training engine: one trainable model on one rank, its AdamW and lr schedule, and the only
optimizer-step loop of the project (the shape of verl's `BaseEngine`). SFT
(`verl.trainer.sft`), the PPO actor (`verl.workers.actor`) and the critic
(`verl.workers.critic`) each hand it their micro-batches and a loss function; everything after
the loss (backward, accumulation, the non-finite check, clipping, the step, the schedule, the
checkpoint files) happens here once.

Loss convention (the global token-mean of the actor, SFT and the critic): `loss_fn(micro)`
returns that micro-batch's share of the batch loss, i.e. its token (or sequence) sum divided by
the count of the WHOLE batch over all ranks. `train_batch` back-propagates `loss * world size`:
FSDP averages gradients over ranks, so the factor turns that average back into the sum of the
ranks' shares. The gradient then does not depend on how rows are split into ranks and
micro-batches.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from verl.models.lora import LORA_CONFIG_FILE, LoRAConfig, is_adapter_name, load_lora_config, save_lora_config
from verl.utils import checkpoint
from verl.workers.config import OptimConfig
from verl.workers.engine.optim import apply_configured_lr, optimizer_for

Micro = TypeVar("Micro")


class NonFiniteLossError(FloatingPointError):
    """A loss became NaN/inf on some rank; the message names the step and what to check."""


@dataclass(frozen=True)
class StepResult:
    """What one `Engine.train_batch` did."""

    grad_norm: float
    """Norm of the accumulated gradient before clipping (over all shards)."""
    stepped: bool
    """False when the norm was not finite: the optimizer step was skipped, the weights kept."""
    lr: float
    """The learning rate this step used."""


def count_on_all_ranks(local: int) -> int:
    """Sum of `local` over ranks: every rank learns about a non-finite loss before any raises."""
    if not dist.is_initialized():
        return local
    tensor = torch.tensor([float(local)])
    if dist.get_backend() == "nccl":
        tensor = tensor.cuda()
    dist.all_reduce(tensor)
    return int(tensor.item())


def clip_and_step(params, max_grad_norm: float, step: Callable[[], None]) -> tuple[float, bool]:
    """Clips gradients to `max_grad_norm` (over all shards), then calls the optimizer's `step`
    unless the norm is not finite: one bad batch must not poison the weights. Returns (grad
    norm, whether it stepped)."""
    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    grad_norm = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
    if not math.isfinite(grad_norm):
        return grad_norm, False
    step()
    return grad_norm, True


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


class Engine:
    """`module` (FSDP-sharded, or a plain module in one process) with AdamW over its trainable
    parameters and the lr schedule of `optim` over `total_steps` optimizer steps.
    `max_grad_norm`: gradient clipping norm. `offload_optimizer`: AdamW moments stay on CPU
    except during the step (GPU memory for long rollouts)."""

    def __init__(
        self,
        module: nn.Module,
        optim: OptimConfig,
        total_steps: int,
        max_grad_norm: float,
        offload_optimizer: bool = False,
    ):
        self.module = module
        self.optim = optim
        self.max_grad_norm = max_grad_norm
        self.offload_optimizer = offload_optimizer
        self.parameters, self.optimizer, self.scheduler = optimizer_for(module, optim, total_steps)
        self.optimizer_steps = 0

    # ---- training ----------------------------------------------------------------------------
    def accumulate(self, micro_batches: Iterable[Micro], loss_fn: Callable[[Micro], torch.Tensor]) -> int:
        """Adds the gradient of `loss_fn(micro) * world size` for every micro-batch (see the
        module docstring); returns how many of this rank's losses were not finite."""
        grad_scale = float(world_size())
        nonfinite = 0
        for micro in micro_batches:
            loss = loss_fn(micro)
            (loss * grad_scale).backward()
            nonfinite += int(not torch.isfinite(loss.detach()).item())
        return nonfinite

    def train_batch(
        self,
        micro_batches: Iterable[Micro],
        loss_fn: Callable[[Micro], torch.Tensor],
        nonfinite_error: Callable[[int], str],
    ) -> StepResult:
        """One optimizer step over this rank's micro-batches of a batch: zero the gradients,
        `accumulate`, stop every rank alike when some rank's loss was not finite (raising
        `NonFiniteLossError(nonfinite_error(count))`), clip, step unless the norm is not finite
        (one bad batch must not poison the weights), advance the lr schedule."""
        self.module.train()
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.zero_grad(set_to_none=True)
        nonfinite = count_on_all_ranks(self.accumulate(micro_batches, loss_fn))
        if nonfinite > 0:
            raise NonFiniteLossError(nonfinite_error(nonfinite))
        grad_norm, stepped = clip_and_step(self.parameters, self.max_grad_norm, self._optimizer_step)
        self.scheduler.step()
        self.optimizer_steps += 1
        return StepResult(grad_norm, stepped, lr)

    @property
    def lr(self) -> float:
        """The learning rate the next step uses."""
        return self.scheduler.get_last_lr()[0]

    def _optimizer_step(self) -> None:
        if self.offload_optimizer:
            self._move_optimizer_state(next(self.module.parameters()).device)
        self.optimizer.step()
        if self.offload_optimizer:
            self._move_optimizer_state(torch.device("cpu"))

    def _move_optimizer_state(self, device: torch.device) -> None:
        for state in self.optimizer.state.values():
            for key, value in state.items():
                if isinstance(value, torch.Tensor) and value.dim() > 0:
                    state[key] = value.to(device, non_blocking=True)

    # ---- state and checkpoints ---------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The engine's own state beside the weights and AdamW moments: the lr schedule's
        position and the optimizer-step count."""
        return {"scheduler": self.scheduler.state_dict(), "optimizer_steps": self.optimizer_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores `state_dict()`; the peak lr is the configured `optim.lr`, not the saved one
        (`apply_configured_lr`)."""
        self.scheduler.load_state_dict(state["scheduler"])
        apply_configured_lr(self.optimizer, self.scheduler, self.optim.lr)
        self.optimizer_steps = state["optimizer_steps"]

    def save(self, folder: str, keep: Callable[[str], bool] | None = None) -> list[str]:
        """Writes this rank's files of the checkpoint format (`verl.utils.checkpoint`: weight
        shards, AdamW state, then `state_dict()` and the RNG states) into `folder`; returns
        their names relative to it. `keep(name)`: which weights to write (a LoRA run's adapters
        alone). Every rank calls it."""
        size, me = world_size(), rank()
        checkpoint.save_rank_state(folder, size, me, self.module, self.optimizer, self.state_dict(), keep)
        return [checkpoint.shard_file(kind, size, me) for kind in checkpoint.RANK_FILES]

    def resume(self, folder: str, keep: Callable[[str], bool] | None = None) -> None:
        """Loads what `save` wrote: weights (those `keep` selects), AdamW state, schedule, step
        count, RNG states."""
        self.load_state_dict(checkpoint.load_rank_state(folder, world_size(), rank(), self.module, self.optimizer, keep))


def save_policy(engine: Engine, folder: str, hf_source_dir: str, lora: LoRAConfig, base_model: str) -> list[str]:
    """A policy's folder of a checkpoint (`global_step_N/actor`), the same for RL and SFT:
    `Engine.save` (a LoRA run keeps its adapters alone: its frozen base is `base_model`, which a
    resume loads first) and, on rank 0, the Hugging Face metadata of `hf_source_dir` and the
    LoRA settings the merger folds the adapters with. Returns the written files relative to
    `folder`. Every rank calls it."""
    written = engine.save(folder, keep=is_adapter_name if lora.enabled else None)
    if rank() == 0:
        hf_dir = os.path.join(folder, "huggingface")
        checkpoint.save_hf_metadata(hf_source_dir, hf_dir)
        written += [f"huggingface/{name}" for name in sorted(os.listdir(hf_dir))]
        if lora.enabled:
            save_lora_config(folder, lora, base_model)
            written.append(LORA_CONFIG_FILE)
    return written


def resume_policy(engine: Engine, folder: str, lora: LoRAConfig, base_model: str, base_model_key: str) -> None:
    """Loads what `save_policy` wrote into `engine`; refuses adapters trained on another base
    than `base_model` (the config key `base_model_key` names it)."""
    saved_lora = load_lora_config(folder)
    if lora.enabled and saved_lora is not None and (
        os.path.realpath(saved_lora.base_model) != os.path.realpath(base_model)
    ):
        raise ValueError(
            f"{folder}/{LORA_CONFIG_FILE}: the adapters were trained on base model {saved_lora.base_model}, "
            f"but this run loads {base_model} ({base_model_key}); resume with that base"
        )
    engine.resume(folder, keep=is_adapter_name if lora.enabled else None)
