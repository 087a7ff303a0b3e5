"""Optimizer and learning-rate schedule: one rule for SFT and RL (the step itself is
`verl.workers.engine.engine.Engine.train_batch`)."""

from __future__ import annotations

import math
from functools import partial

import torch
from torch import nn


def lr_lambda(step: int, warmup_steps: int, total_steps: int, scheduler: str, min_lr_ratio: float) -> float:
    """Multiplier of the peak lr: linear warm-up, then constant or cosine decay to min_lr_ratio."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if scheduler == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_steps_for(warmup_ratio: float, total_steps: int) -> int:
    """Warm-up steps: the ratio of the run, rounded up (a non-zero ratio warms up at least one step)."""
    return math.ceil(warmup_ratio * total_steps)


def build_optimizer(
    params: list[nn.Parameter],
    lr: float,
    betas: tuple[float, float],
    eps: float,
    weight_decay: float,
    total_steps: int,
    warmup_ratio: float,
    scheduler: str,
    min_lr_ratio: float,
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over `params` and its LambdaLR schedule (see `lr_lambda`, `warmup_steps_for`)."""
    if not params:
        raise ValueError("every parameter is frozen: nothing to train")
    optimizer = torch.optim.AdamW(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)
    schedule = partial(
        lr_lambda,
        warmup_steps=warmup_steps_for(warmup_ratio, total_steps),
        total_steps=total_steps,
        scheduler=scheduler,
        min_lr_ratio=min_lr_ratio,
    )
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def apply_configured_lr(
    optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LambdaLR, lr: float
) -> None:
    """Loading a checkpoint's optimizer and scheduler state also loads the peak lr it was saved
    with, so a resume with a new `optim.lr` would silently keep the old one; this puts the
    configured peak back, at the schedule's saved point."""
    scheduler.base_lrs = [lr for _ in optimizer.param_groups]
    for group, multiplier in zip(optimizer.param_groups, scheduler.lr_lambdas):
        group["initial_lr"] = lr
        group["lr"] = lr * multiplier(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]


def optimizer_for(
    model: nn.Module, optim, total_steps: int
) -> tuple[list[nn.Parameter], torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """(trainable parameters, AdamW, lr schedule) of an RL worker's model from its
    `verl.workers.config.OptimConfig` (the actor's and the critic's)."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer, scheduler = build_optimizer(
        params, optim.lr, optim.betas, optim.eps, optim.weight_decay,
        total_steps, optim.lr_warmup_ratio, optim.lr_scheduler, optim.min_lr_ratio,
    )
    return params, optimizer, scheduler
