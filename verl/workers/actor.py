"""Log-probs of response tokens and the PPO-clipped policy update on one rank's shard of a batch.

Batch keys (per rank): `input_ids`, `attention_mask` (bs, P+R); `responses`, `response_mask`
(bs, R); non-tensor `multi_modal_inputs` (per-sample dict, {} for text-only rows). The update
also reads `old_log_probs`, `advantages` and, with the KL loss, `ref_log_probs` (bs, R).
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from verl.models.qwen_vl import forward_in_step, merge_multi_modal_inputs, position_ids_for
from verl.protocol import DataProto
from verl.trainer import core_algos
from verl.trainer.config import ActorConfig


def forward_response_log_probs(
    model: nn.Module, micro_batch: DataProto, temperature: float, with_entropy: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(bs, R) log-probs of `responses` under `model` (logits divided by `temperature`, as the
    sampler used them), and the per-token entropy when asked."""
    input_ids = micro_batch.batch["input_ids"]
    attention_mask = micro_batch.batch["attention_mask"]
    responses = micro_batch.batch["responses"]
    device = next(model.parameters()).device
    multi_modal = merge_multi_modal_inputs(micro_batch.non_tensor_batch["multi_modal_inputs"])
    image_grid_thw = multi_modal.get("image_grid_thw")
    position_ids = position_ids_for(model, input_ids, attention_mask, image_grid_thw)
    multi_modal = {k: v.to(device) for k, v in multi_modal.items()}
    if "pixel_values" in multi_modal:
        multi_modal["pixel_values"] = multi_modal["pixel_values"].to(next(model.parameters()).dtype)
    response_length = responses.shape[1]
    output = forward_in_step(
        model,
        input_ids=input_ids.to(device),
        attention_mask=attention_mask.to(device),
        position_ids=position_ids.to(device),
        use_cache=False,
        # Only the positions that predict response tokens: (bs, R+1, V) instead of (bs, P+R, V).
        logits_to_keep=response_length + 1,
        **multi_modal,
    )
    logits = output.logits[:, :-1, :].float()
    if temperature != 1.0:
        logits = logits / temperature
    log_probs = core_algos.log_probs_from_logits(logits, responses.to(device))
    entropy = core_algos.entropy_from_logits(logits) if with_entropy else None
    return log_probs, entropy


@torch.no_grad()
def compute_log_probs(
    model: nn.Module, data: DataProto, micro_batch_size: int, temperature: float, with_entropy: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs (and entropy) of every row of `data`, micro-batch by micro-batch, on CPU."""
    was_training = model.training
    model.eval()
    log_probs, entropies = [], []
    for micro_batch in data.split(micro_batch_size):
        lp, ent = forward_response_log_probs(model, micro_batch, temperature, with_entropy)
        log_probs.append(lp.cpu())
        if ent is not None:
            entropies.append(ent.cpu())
    model.train(was_training)
    return torch.cat(log_probs), (torch.cat(entropies) if with_entropy else None)


def lr_lambda(step: int, warmup_steps: int, total_steps: int, scheduler: str, min_lr_ratio: float) -> float:
    """Multiplier of the peak lr: linear warm-up, then constant or cosine decay to min_lr_ratio."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if scheduler == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class NonFiniteLossError(FloatingPointError):
    """The policy loss became NaN/inf; the message names the step and the loss terms."""


class PPOActor:
    """The trainable policy on one rank: FSDP-sharded model, AdamW, lr schedule."""

    def __init__(
        self,
        model: nn.Module,
        config: ActorConfig,
        total_optimizer_steps: int,
        temperature: float,
        offload_optimizer: bool = False,
    ):
        self.model = model
        self.config = config
        self.temperature = temperature
        optim = config.optim
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            params, lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps, weight_decay=optim.weight_decay
        )
        warmup_steps = int(optim.lr_warmup_ratio * total_optimizer_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda step: lr_lambda(step, warmup_steps, total_optimizer_steps, optim.lr_scheduler, optim.min_lr_ratio),
        )
        self.optimizer_steps = 0
        # AdamW moments stay on CPU except during the step: GPU memory for long rollouts.
        self.offload_optimizer_between_steps = offload_optimizer

    def _optimizer_step(self) -> None:
        if self.offload_optimizer_between_steps:
            self._move_optimizer_state(next(self.model.parameters()).device)
        self.optimizer.step()
        if self.offload_optimizer_between_steps:
            self._move_optimizer_state(torch.device("cpu"))

    def _move_optimizer_state(self, device: torch.device) -> None:
        for state in self.optimizer.state.values():
            for key, value in state.items():
                if isinstance(value, torch.Tensor) and value.dim() > 0:
                    state[key] = value.to(device, non_blocking=True)

    def compute_log_probs(self, data: DataProto) -> tuple[torch.Tensor, torch.Tensor]:
        log_probs, entropy = compute_log_probs(
            self.model, data, self.config.micro_batch_size_per_device_for_experience, self.temperature, True
        )
        return log_probs, entropy

    def _micro_batch_loss(self, micro: DataProto, weight: float, metrics: dict[str, list[float]]) -> torch.Tensor:
        cfg = self.config
        mask = micro.batch["response_mask"].float()
        max_length = mask.shape[1]
        need_entropy = cfg.entropy_coeff != 0.0
        log_probs, entropy = forward_response_log_probs(self.model, micro, self.temperature, need_entropy)
        mask = mask.to(log_probs.device)
        pg_loss, pg_metrics = core_algos.compute_policy_loss(
            old_log_probs=micro.batch["old_log_probs"].to(log_probs.device),
            log_probs=log_probs,
            advantages=micro.batch["advantages"].to(log_probs.device),
            response_mask=mask,
            clip_ratio_low=cfg.clip_ratio_low,
            clip_ratio_high=cfg.clip_ratio_high,
            clip_ratio_dual=cfg.clip_ratio_dual,
            loss_agg_mode=cfg.loss_agg_mode,
            max_response_length=max_length,
        )
        loss = pg_loss
        metrics["actor/pg_loss"].append(pg_loss.item())
        for key, value in pg_metrics.items():
            metrics[f"actor/{key}"].append(float(value))
        if cfg.use_kl_loss:
            kl = core_algos.kl_penalty(log_probs, micro.batch["ref_log_probs"].to(log_probs.device), cfg.kl_loss_type)
            kl_loss = core_algos.agg_loss(kl, mask, cfg.loss_agg_mode, max_length)
            loss = loss + cfg.kl_loss_coef * kl_loss
            metrics["actor/kl_loss"].append(kl_loss.item())
        if need_entropy:
            entropy_loss = core_algos.agg_loss(entropy, mask, cfg.loss_agg_mode, max_length)
            loss = loss - cfg.entropy_coeff * entropy_loss
            metrics["actor/entropy_loss"].append(entropy_loss.item())
        (loss * weight).backward()
        return loss.detach()

    def update_policy(self, data: DataProto, num_mini_batches: int, step: int) -> dict[str, float]:
        """PPO epochs over `num_mini_batches` mini-batches of `data`, each one optimizer step
        accumulated over micro-batches. Token-mean losses are weighted by each micro-batch's
        share of the mini-batch's tokens so accumulation equals one big batch."""
        cfg = self.config
        self.model.train()
        metrics: dict[str, list[float]] = defaultdict(list)
        for _ in range(cfg.ppo_epochs):
            for indices in np.array_split(np.arange(len(data)), num_mini_batches):
                mini = data[indices]
                mini_tokens = mini.batch["response_mask"].sum().item()
                self.optimizer.zero_grad(set_to_none=True)
                nonfinite = torch.zeros(1)
                for micro in mini.split(cfg.micro_batch_size_per_device_for_update):
                    if cfg.loss_agg_mode == "token-mean":
                        weight = micro.batch["response_mask"].sum().item() / max(mini_tokens, 1)
                    else:
                        weight = len(micro) / len(mini)
                    loss = self._micro_batch_loss(micro, weight, metrics)
                    nonfinite += float(not torch.isfinite(loss).item())
                if dist.is_initialized():  # every rank must agree before anyone raises
                    dist.all_reduce(nonfinite)
                if nonfinite.item() > 0:
                    raise NonFiniteLossError(
                        f"step {step}: non-finite actor loss on {int(nonfinite.item())} micro-batch(es) "
                        f"(last pg_loss={metrics['actor/pg_loss'][-1]}); check rewards/advantages for NaN "
                        f"and lower worker.actor.optim.lr"
                    )
                grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
                grad_norm = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
                if math.isfinite(grad_norm):
                    self._optimizer_step()
                else:  # a single bad batch should not poison the weights; counted in metrics
                    metrics["actor/skipped_steps"].append(1.0)
                self.scheduler.step()
                self.optimizer_steps += 1
                metrics["actor/grad_norm"].append(grad_norm)
        metrics["actor/lr"].append(self.scheduler.get_last_lr()[0])
        return {key: float(np.mean(values)) for key, values in metrics.items()}

