"""The value model of GAE/PPO on one rank's shard of a batch: values of the response positions
and the clipped value-loss update.

Batch keys (per rank): those of the actor (`input_ids`, `attention_mask`, `responses`,
`response_mask`, non-tensor `multi_modal_inputs`); the update also reads `values` (at collection)
and `returns` (the GAE targets), (bs, R).
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch
from torch import nn

from verl.algorithms import core_algos
from verl.protocol import DataProto
from verl.workers.actor import forward_response_logits, micro_batches, mini_batch_normalizer
from verl.workers.config import CriticConfig
from verl.workers.engine.micro_batch import trim_padding
from verl.workers.engine.engine import Engine


def forward_response_values(model: nn.Module, micro_batch: DataProto, groups: np.ndarray | None = None) -> torch.Tensor:
    """(bs, R) values of a value model (`verl.models.value_head`) at the state before each
    response token, the positions whose logits predict the tokens in the policy. `groups`:
    prompt-group labels, see `forward_response_logits`."""
    return forward_response_logits(model, micro_batch, groups)[..., 0]


class PPOCritic:
    """The trainable value model on one rank: (FSDP-sharded) model, AdamW, lr schedule (`engine`).

    `max_token_len` / `max_token_len_for_experience`: token budgets per micro-batch of the update
    / the no-grad value pass (None: the configured row counts). `share_prefix`: rows with the
    same prompt are computed as one packed sequence (as the actor's)."""

    def __init__(
        self,
        model: nn.Module,
        config: CriticConfig,
        total_optimizer_steps: int,
        max_token_len: int | None = None,
        max_token_len_for_experience: int | None = None,
        share_prefix: bool = False,
    ):
        self.model = model
        self.config = config
        self.share_prefix = share_prefix
        self.max_token_len = max_token_len
        self.max_token_len_for_experience = max_token_len_for_experience
        self.engine = Engine(model, config.optim, total_optimizer_steps, config.max_grad_norm)

    @torch.no_grad()
    def compute_values(self, data: DataProto) -> torch.Tensor:
        """(bs, R) float32 values on CPU, 0 at padding."""
        was_training = self.model.training
        self.model.eval()
        values = torch.zeros(data.batch["responses"].shape, dtype=torch.float32)
        micro_rows = self.config.micro_batch_size_per_device_for_experience
        for indices, groups in micro_batches(data, micro_rows, self.max_token_len_for_experience, self.share_prefix):
            micro = trim_padding(data[indices])
            micro_values = forward_response_values(self.model, micro, groups).float().cpu()
            values[torch.as_tensor(indices), : micro_values.shape[1]] = micro_values
        self.model.train(was_training)
        return values * data.batch["response_mask"]

    def update_critic(self, data: DataProto, num_mini_batches: int, step: int) -> dict[str, float]:
        """ppo_epochs passes over `num_mini_batches` mini-batches, one optimizer step each,
        gradient accumulated over micro-batches with the mini-batch's global normaliser (as
        the actor's update)."""
        cfg = self.config
        metrics: dict[str, list[float]] = defaultdict(list)
        max_response_length = data.batch["responses"].shape[1]
        for _ in range(cfg.ppo_epochs):
            for mini_indices in np.array_split(np.arange(len(data)), num_mini_batches):
                mini = data[mini_indices]
                normalizer, grad_scale = mini_batch_normalizer(mini, cfg.loss_agg_mode)
                loss_sum = 0.0
                plans = micro_batches(mini, cfg.micro_batch_size_per_device_for_update, self.max_token_len, self.share_prefix)

                def loss_fn(plan: tuple[np.ndarray, np.ndarray | None]) -> torch.Tensor:
                    nonlocal loss_sum
                    indices, groups = plan
                    micro = trim_padding(mini[indices])
                    values = forward_response_values(self.model, micro, groups)
                    device = values.device
                    mask = micro.batch["response_mask"].float().to(device)
                    loss, loss_metrics = core_algos.compute_value_loss(
                        values, micro.batch["values"].to(device), micro.batch["returns"].to(device), mask,
                        cfg.clip_range_value, cfg.loss_agg_mode, max_response_length, normalizer,
                    )
                    loss_sum += loss.item() * grad_scale
                    metrics["critic/vf_clipfrac"].append(loss_metrics["vf_clipfrac"])
                    return loss

                result = self.engine.train_batch(
                    plans, loss_fn,
                    lambda count: f"step {step}: non-finite critic loss; check the rewards/returns for NaN and lower "
                    "worker.critic.optim.lr",
                )
                if not result.stepped:
                    metrics["critic/skipped_steps"].append(1.0)
                metrics["critic/vf_loss"].append(loss_sum)
                metrics["critic/grad_norm"].append(result.grad_norm)
        metrics["critic/lr"].append(self.engine.lr)
        return {key: float(np.mean(values)) for key, values in metrics.items()}
