"""Log-probs of response tokens and the PPO-clipped policy update on one rank's shard of a batch.

Batch keys (per rank): `input_ids`, `attention_mask` (bs, P+R); `responses`, `response_mask`
(bs, R); non-tensor `multi_modal_inputs` (per-sample dict, {} for text-only rows). The update
also reads `advantages`, optionally `old_log_probs` (else the update is on-policy), with the
KL loss `ref_log_probs`, and with rollout correction `rollout_log_probs` (bs, R).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from verl.models.qwen_vl import forward_in_step, merge_multi_modal_inputs, position_ids_for
from verl.protocol import DataProto
from verl.algorithms import core_algos, papo
from verl.algorithms.rollout_correction import rollout_importance_weights
from verl.workers.config import ActorConfig
from verl.workers.engine.shared_prefix import block_mask_for, pack_shared_prefix, packing_of, prompt_group_labels
from verl.workers.engine.engine import Engine
from verl.workers.engine.micro_batch import (
    max_across_ranks,
    plan_micro_batches,
    row_lengths,
    sum_across_ranks,
    trim_padding,
)


def forward_response_logits(model: nn.Module, micro_batch: DataProto, groups: np.ndarray | None = None) -> torch.Tensor:
    """(bs, R, V) float32 outputs of `model` at the positions that predict each response token
    (for a value model, V = 1: the value of the state before each response token).
    `groups`: (bs,) prompt-group labels of the rows (`prompt_group_labels`); rows with the same
    label are computed as one packed sequence (`verl.workers.engine.shared_prefix`), the same
    outputs at a fraction of the tokens. None: one sequence per row."""
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    if groups is not None and len(np.unique(groups)) < len(groups):
        attention = packing_of(model)
        packed = pack_shared_prefix(
            micro_batch, groups, lambda ids, mask, grid: position_ids_for(model, ids, mask, grid), attention, device
        )
        if attention == "dense":
            packed.inputs["attention_mask"] = block_mask_for(
                packed.inputs["attention_mask"], model.config.get_text_config()._attn_implementation, dtype
            )
        # A block-sparse mask is built on `device` already (and `BlockMask.to` would drop the
        # packed layout the `segments` kernel reads from it).
        inputs = {
            k: v if k == "attention_mask" and attention != "dense" else v.to(device)
            for k, v in packed.inputs.items()
        }
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
        output = forward_in_step(model, use_cache=False, **inputs)
        return packed.row_outputs(output.logits).float()
    input_ids = micro_batch.batch["input_ids"]
    attention_mask = micro_batch.batch["attention_mask"]
    responses = micro_batch.batch["responses"]
    multi_modal = merge_multi_modal_inputs(micro_batch.non_tensor_batch["multi_modal_inputs"])
    image_grid_thw = multi_modal.get("image_grid_thw")
    position_ids = position_ids_for(model, input_ids, attention_mask, image_grid_thw)
    multi_modal = {k: v.to(device) for k, v in multi_modal.items()}
    if "pixel_values" in multi_modal:
        multi_modal["pixel_values"] = multi_modal["pixel_values"].to(dtype)
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
    return output.logits[:, :-1, :].float()


ENTROPY_CHUNK_TOKENS = 1024
"""Tokens per piece of a metric-only entropy: its softmax temporaries stay chunk x vocab."""


def entropy_without_gradient(logits: torch.Tensor) -> torch.Tensor:
    """`entropy_from_logits` for a metric: no autograd graph (a tokens x vocab softmax kept
    through backward is ~5 GB at 8K tokens with a 152K vocabulary) and computed in pieces of
    `ENTROPY_CHUNK_TOKENS`, so no full-size temporary sits beside the logits either."""
    with torch.no_grad():
        flat = logits.detach().reshape(-1, logits.shape[-1])
        pieces = [core_algos.entropy_from_logits(chunk) for chunk in flat.split(ENTROPY_CHUNK_TOKENS)]
        return torch.cat(pieces).view(logits.shape[:-1])


def forward_response_log_probs(
    model: nn.Module,
    micro_batch: DataProto,
    temperature: float,
    with_entropy: bool,
    groups: np.ndarray | None = None,
    entropy_gradient: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(bs, R) log-probs of `responses` under `model` (logits divided by `temperature`, as the
    sampler used them), and the per-token entropy when asked: differentiable with
    `entropy_gradient` (an entropy bonus), else a metric (`entropy_without_gradient`).
    `groups`: see `forward_response_logits`."""
    logits = forward_response_logits(model, micro_batch, groups)
    responses = micro_batch.batch["responses"]
    device = logits.device
    if temperature != 1.0:
        logits = logits / temperature
    log_probs = core_algos.log_probs_from_logits(logits, responses.to(device))
    if not with_entropy:
        return log_probs, None
    entropy = core_algos.entropy_from_logits(logits) if entropy_gradient else entropy_without_gradient(logits)
    return log_probs, entropy


def split_micro_batches(
    data: DataProto, micro_batch_size: int, max_token_len: int | None, groups: np.ndarray | None = None
) -> list[np.ndarray]:
    """Row indices of each micro-batch of `data`: by token budget when `max_token_len` is set
    (dynamic batch size), else `micro_batch_size` rows each; rows of similar length together
    (with prompt-group labels `groups`, the rows of a group together, sized as packed). The
    count is the same on every rank (FSDP collectives run per forward)."""
    prompt, response = row_lengths(data)
    max_rows = None if max_token_len is not None else micro_batch_size
    plans = plan_micro_batches(prompt, response, max_token_len, max_rows, groups=groups)
    count = max_across_ranks(len(plans))
    if count > len(plans):
        plans = plan_micro_batches(prompt, response, max_token_len, max_rows, min_count=count, groups=groups)
    return plans


def micro_batches(
    data: DataProto, micro_batch_size: int, max_token_len: int | None, share_prefix: bool
) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """`split_micro_batches` of `data` as (row indices, their prompt-group labels) pairs; with
    `share_prefix` the labels are computed once for the whole batch and planned by, else None."""
    groups = prompt_group_labels(data) if share_prefix else None
    plans = split_micro_batches(data, micro_batch_size, max_token_len, groups)
    return [(indices, None if groups is None else groups[indices]) for indices in plans]


@torch.no_grad()
def compute_log_probs(
    model: nn.Module,
    data: DataProto,
    micro_batch_size: int,
    temperature: float,
    with_entropy: bool,
    max_token_len: int | None = None,
    share_prefix: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs (and entropy) of every row of `data`, (bs, R) on CPU, 0 at padding. Each
    micro-batch (see `split_micro_batches`) is cut to its longest row before the forward;
    `share_prefix`: rows of one prompt share its forward (`forward_response_logits`)."""
    was_training = model.training
    model.eval()
    shape = data.batch["responses"].shape
    log_probs = torch.zeros(shape, dtype=torch.float32)
    entropies = torch.zeros(shape, dtype=torch.float32) if with_entropy else None
    for indices, groups in micro_batches(data, micro_batch_size, max_token_len, share_prefix):
        micro = trim_padding(data[indices])
        lp, ent = forward_response_log_probs(model, micro, temperature, with_entropy, groups)
        rows = torch.as_tensor(indices)
        log_probs[rows, : lp.shape[1]] = lp.float().cpu()
        if ent is not None:
            entropies[rows, : ent.shape[1]] = ent.float().cpu()
    model.train(was_training)
    return log_probs, entropies


LOSS_MASK = "loss_mask"
"""Batch key of the tokens the loss trains, when it is not `response_mask`: MIS sets the tokens
it rejects to 0 (`with_rejection_mask`)."""
OBJECTIVE_PART, OBJECTIVE_WEIGHT = "objective_part", "objective_weight"
"""Batch keys (bs,) of an objective with separately aggregated terms (self_reward.objective=
paper_v2): the term a row belongs to (an index into `OBJECTIVE_PARTS`) and the term's weight."""
OBJECTIVE_PARTS = ("answer", "visual")
"""paper_v2's terms: the answer rollout (pass 1) and the visual re-answer rollout (pass 2); each
has its own policy loss and KL loss, each aggregated over its own tokens, logged apart."""


def loss_mask_of(data: DataProto, part: int | None = None) -> torch.Tensor:
    """(bs, R) tokens the loss trains (`LOSS_MASK` when set, else `response_mask`), restricted
    to the rows of objective term `part` when given."""
    mask = data.batch[LOSS_MASK if LOSS_MASK in data.batch else "response_mask"]
    if part is not None:
        mask = mask * (data.batch[OBJECTIVE_PART] == part).unsqueeze(-1).to(mask.device)
    return mask


def mini_batch_normalizer(mini: DataProto, loss_agg_mode: str, part: int | None = None) -> tuple[float, float]:
    """The loss normaliser of a mini-batch (of its rows of objective term `part`, when given),
    the same on every rank: its trained-token count (`loss_mask_of`) over all ranks for
    token-mean, its sequence count for the seq-mean modes (at least 1: an all-padding
    mini-batch has every loss term 0); and the gradient scale, the world size (FSDP averages
    gradients over ranks, the normaliser already divides by the global count)."""
    mask = loss_mask_of(mini, part)
    local_counts = [float(mask.sum().item()), float((mask.sum(-1) > 0).sum().item())]
    global_tokens, global_sequences = sum_across_ranks(local_counts)
    normalizer = global_tokens if loss_agg_mode == "token-mean" else global_sequences
    grad_scale = float(dist.get_world_size()) if dist.is_initialized() else 1.0
    return max(normalizer, 1.0), grad_scale


WEIGHTED, TOKENS, MAXIMUM = "weighted_sum:", "metric_tokens", "maximum:"


def record_micro_batch_metrics(values: dict[str, float], tokens: float, sums: dict[str, float]) -> None:
    """Adds a micro-batch's loss metrics (means over its `tokens`; `*_max` maxima) to `sums`;
    the caller adds `tokens` to `sums[TOKENS]` once per micro-batch. `mini_batch_metrics` then
    gives means over all of the mini-batch's tokens on this rank, however its rows were split
    into micro-batches."""
    for key, value in values.items():
        if key.endswith("_max"):
            sums[MAXIMUM + key] = max(sums.get(MAXIMUM + key, float("-inf")), float(value))
        else:
            sums[WEIGHTED + key] += float(value) * tokens


def mini_batch_metrics(sums: dict[str, float]) -> dict[str, float]:
    """The token-weighted means and the maxima `record_micro_batch_metrics` collected."""
    total = sums.get(TOKENS, 0.0)
    result = {key.removeprefix(WEIGHTED): sums[key] / total if total else 0.0 for key in sums if key.startswith(WEIGHTED)}
    result.update({key.removeprefix(MAXIMUM): sums[key] for key in sums if key.startswith(MAXIMUM)})
    return result


def with_masked_images(data: DataProto, ratio: float, generator: torch.Generator) -> DataProto:
    """The same rows with `ratio` of each image's patches hidden (`papo.mask_patches`);
    text-only rows unchanged."""
    inputs = np.empty(len(data), dtype=object)
    inputs[:] = [
        {**row, "pixel_values": papo.mask_patches(row["pixel_values"], ratio, generator)}
        if row and "pixel_values" in row else row
        for row in data.non_tensor_batch["multi_modal_inputs"]
    ]
    return DataProto(
        batch=dict(data.batch), non_tensor_batch={**data.non_tensor_batch, "multi_modal_inputs": inputs},
        meta_info=dict(data.meta_info),
    )


class PPOActor:
    """The trainable policy on one rank: FSDP-sharded model, AdamW, lr schedule (`engine`).

    `max_token_len` / `max_token_len_for_experience`: token budgets per micro-batch of the
    update / the no-grad log-prob pass (None: `micro_batch_size_per_device_*` rows each).
    `share_prefix`: rows with the same prompt are computed as one packed sequence."""

    def __init__(
        self,
        model: nn.Module,
        config: ActorConfig,
        total_optimizer_steps: int,
        temperature: float,
        offload_optimizer: bool = False,
        max_token_len: int | None = None,
        max_token_len_for_experience: int | None = None,
        share_prefix: bool = False,
    ):
        self.model = model
        self.config = config
        self.temperature = temperature
        self.share_prefix = share_prefix
        self.max_token_len = max_token_len
        self.max_token_len_for_experience = max_token_len_for_experience
        self.engine = Engine(model, config.optim, total_optimizer_steps, config.max_grad_norm, offload_optimizer)
        # Chooses PAPO's hidden patches; the same sequence on every rank, each on its own rows.
        self.papo_generator = torch.Generator().manual_seed(0)

    def compute_log_probs(self, data: DataProto) -> tuple[torch.Tensor, torch.Tensor]:
        log_probs, entropy = compute_log_probs(
            self.model,
            data,
            self.config.micro_batch_size_per_device_for_experience,
            self.temperature,
            True,
            self.max_token_len_for_experience,
            self.share_prefix,
        )
        return log_probs, entropy

    def _micro_batch_loss(
        self,
        micro: DataProto,
        normalizers: list[float],
        grad_scale: float,
        max_response_length: int,
        sums: dict[str, float],
        metrics: dict[str, list[float]],
        groups: np.ndarray | None,
    ) -> torch.Tensor:
        """This micro-batch's share of the mini-batch loss: token (or sequence) sums divided by
        the mini-batch's global count (the engine back-propagates it times the world size
        `grad_scale`: FSDP averages gradients over ranks). `normalizers`: that count, one per
        objective term (`OBJECTIVE_PARTS` when the rows carry `OBJECTIVE_PART`, else one). Loss
        terms are added to `sums` as shares of the global mini-batch loss. `groups`: the rows'
        prompt-group labels (None: no packing)."""
        cfg = self.config
        mask = loss_mask_of(micro).float()
        on_policy = "old_log_probs" not in micro.batch
        # The entropy bonus and PAPO's double entropy need its gradient; the on-policy metric
        # does not (`entropy_without_gradient`).
        double_entropy = cfg.papo.enable and cfg.papo.entropy_coef > 0
        entropy_gradient = cfg.entropy_coeff != 0.0 or double_entropy
        log_probs, entropy = forward_response_log_probs(
            self.model, micro, self.temperature, entropy_gradient or on_policy, groups,
            entropy_gradient=entropy_gradient,
        )
        mask = mask.to(log_probs.device)
        tokens = float(mask.sum().item())
        sums[TOKENS] += tokens
        # Exactly on-policy (one mini-batch, one epoch): the behaviour policy is the current one.
        old_log_probs = log_probs.detach() if on_policy else micro.batch["old_log_probs"].to(log_probs.device)
        token_weights = None
        correction = cfg.rollout_correction
        # MIS acts through the loss mask (`with_rejection_mask`); TIS weights the token losses.
        if correction.mode == "tis" and correction.applies(self.temperature) and "rollout_log_probs" in micro.batch:
            token_weights, correction_metrics = rollout_importance_weights(
                old_log_probs, micro.batch["rollout_log_probs"].to(log_probs.device), mask,
                correction.mode, correction.level, correction.threshold,
            )
            record_micro_batch_metrics(correction_metrics, tokens, sums)
        if OBJECTIVE_PART in micro.batch:
            parts = micro.batch[OBJECTIVE_PART].to(log_probs.device)
            weights = micro.batch[OBJECTIVE_WEIGHT].to(log_probs.device)
            terms = [
                (f"/{name}", mask * (parts == part).unsqueeze(-1), normalizers[part], weights[parts == part])
                for part, name in enumerate(OBJECTIVE_PARTS)
            ]
        else:
            terms = [("", mask, normalizers[0], None)]
        loss = torch.zeros((), device=log_probs.device)
        for suffix, term_mask, normalizer, row_weights in terms:
            # A term's weight is the same on all its rows; a term without rows here adds 0.
            weight = float(row_weights[0]) if row_weights is not None and len(row_weights) else 1.0
            term_tokens = float(term_mask.sum().item())
            pg_loss, pg_metrics = core_algos.compute_policy_loss_by_name(
                name=cfg.policy_loss,
                old_log_probs=old_log_probs,
                log_probs=log_probs,
                advantages=micro.batch["advantages"].to(log_probs.device),
                response_mask=term_mask,
                clip_ratio_low=cfg.clip_ratio_low,
                clip_ratio_high=cfg.clip_ratio_high,
                clip_ratio_dual=cfg.clip_ratio_dual,
                loss_agg_mode=cfg.loss_agg_mode,
                max_response_length=max_response_length,
                normalizer=normalizer,
                token_weights=token_weights,
            )
            loss = loss + weight * pg_loss
            sums["actor/pg_loss"] += weight * pg_loss.item() * grad_scale
            if suffix:
                sums[f"actor/pg_loss{suffix}"] += pg_loss.item() * grad_scale
            # Token-weighted by the term's tokens: over the terms, the micro-batch's token mean.
            record_micro_batch_metrics({f"actor/{key}": value for key, value in pg_metrics.items()}, term_tokens, sums)
            if cfg.use_kl_loss:
                kl_loss = core_algos.compute_kl_loss(
                    log_probs, micro.batch["ref_log_probs"].to(log_probs.device), term_mask, cfg.kl_loss_type,
                    cfg.loss_agg_mode, max_response_length, normalizer,
                )
                loss = loss + weight * cfg.kl_loss_coef * kl_loss
                sums["actor/kl_loss"] += weight * kl_loss.item() * grad_scale
                if suffix:
                    sums[f"actor/kl_loss{suffix}"] += kl_loss.item() * grad_scale
        if cfg.entropy_coeff != 0.0:
            entropy_loss = core_algos.agg_loss(entropy, mask, cfg.loss_agg_mode, max_response_length, sum(normalizers))
            loss = loss - cfg.entropy_coeff * entropy_loss
            sums["actor/entropy_loss"] += entropy_loss.item() * grad_scale
        if cfg.papo.enable:
            # Every rank runs the masked forward, images or not: FSDP's collectives run per forward.
            masked_log_probs, masked_entropy = forward_response_log_probs(
                self.model, with_masked_images(micro, cfg.papo.mask_ratio, self.papo_generator), self.temperature,
                double_entropy, groups, entropy_gradient=True,
            )
            perception_kl = core_algos.compute_kl_loss(
                log_probs, masked_log_probs, mask, "low_var_kl", cfg.loss_agg_mode, max_response_length,
                sum(normalizers),
            )
            loss = loss - cfg.papo.kl_coef * perception_kl  # maximised
            sums["actor/papo_kl"] += perception_kl.item() * grad_scale
            if double_entropy:
                entropies = core_algos.agg_loss(
                    entropy + masked_entropy, mask, cfg.loss_agg_mode, max_response_length, sum(normalizers)
                )
                loss = loss + cfg.papo.entropy_coef * entropies  # minimised
                sums["actor/papo_double_entropy"] += entropies.item() * grad_scale
        if on_policy:  # what the skipped old-log-prob pass would have reported
            with torch.no_grad():
                sums["entropy_sum"] += core_algos.masked_sum(entropy.detach(), mask).item()
                sums["entropy_tokens"] += mask.sum().item()
                if "rollout_log_probs" in micro.batch:
                    bool_mask = mask.bool()
                    gap = (micro.batch["rollout_log_probs"].to(log_probs.device) - log_probs.detach()).abs()[bool_mask]
                    if gap.numel():
                        sums["gap_sum"] += gap.sum().item()
                        sums["gap_max"] = max(sums["gap_max"], gap.max().item())
        return loss

    def with_rejection_mask(self, mini: DataProto, metrics: dict[str, list[float]]) -> DataProto:
        """MIS (worker.actor.rollout_correction.mode=mis): the rows with `LOSS_MASK`, their
        response tokens minus those (or the sequences) whose pi_old / pi_rollout leaves
        [1/threshold, threshold]. A rejected token leaves the loss, its normaliser and the KL
        loss alike (as verl's rejection sampling does), instead of counting as a zero-loss
        token. Needs `old_log_probs`: the trainer keeps the old-log-prob pass under MIS."""
        correction = self.config.rollout_correction
        mis = correction.mode == "mis" and correction.applies(self.temperature)
        if not (mis and "rollout_log_probs" in mini.batch):
            return mini
        if "old_log_probs" not in mini.batch:
            raise ValueError("rollout_correction.mode=mis needs old_log_probs (the trainer's old-log-prob pass)")
        mask = mini.batch["response_mask"]
        accepted, correction_metrics = rollout_importance_weights(
            mini.batch["old_log_probs"], mini.batch["rollout_log_probs"], mask,
            correction.mode, correction.level, correction.threshold,
        )
        for key, value in correction_metrics.items():
            metrics[key].append(value)
        tensors = dict(mini.batch)
        tensors[LOSS_MASK] = (mask * accepted.to(mask.dtype)).to(mask.dtype)
        return DataProto(batch=tensors, non_tensor_batch=dict(mini.non_tensor_batch), meta_info=dict(mini.meta_info))

    def mini_batch_loss(
        self, mini: DataProto, metrics: dict[str, list[float]]
    ) -> tuple[list[tuple[np.ndarray, np.ndarray | None]], Callable[[tuple], torch.Tensor], Callable[[], None]]:
        """The loss of one mini-batch (this rank's rows of it) for `Engine.train_batch`: its
        dynamic micro-batch plans, the loss function of one plan (`_micro_batch_loss`), and a
        function that adds the mini-batch's metrics to `metrics` once every plan ran. Token-mean
        divides by the token count of the whole mini-batch over all ranks, the seq-mean modes by
        its sequence count (each objective term by its own), so the gradient does not depend on
        how rows are split into ranks and micro-batches."""
        cfg = self.config
        mini = self.with_rejection_mask(mini, metrics)
        parts = range(len(OBJECTIVE_PARTS)) if OBJECTIVE_PART in mini.batch else [None]
        normalizers_and_scales = [mini_batch_normalizer(mini, cfg.loss_agg_mode, part) for part in parts]
        normalizers = [normalizer for normalizer, _ in normalizers_and_scales]
        grad_scale = normalizers_and_scales[0][1]
        # Dr. GRPO's constant: the configured response width, not a micro-batch's trimmed one.
        max_response_length = mini.batch["responses"].shape[1]
        sums: dict[str, float] = defaultdict(float)
        plans = micro_batches(mini, cfg.micro_batch_size_per_device_for_update, self.max_token_len, self.share_prefix)

        def loss_fn(plan: tuple[np.ndarray, np.ndarray | None]) -> torch.Tensor:
            indices, groups = plan
            micro = trim_padding(mini[indices])
            return self._micro_batch_loss(micro, normalizers, grad_scale, max_response_length, sums, metrics, groups)

        def record_metrics() -> None:
            metrics["actor/micro_batches"].append(float(len(plans)))
            for key, value in mini_batch_metrics(sums).items():
                metrics[key].append(value)
            loss_keys = [f"actor/{term}/{name}" for term in ("pg_loss", "kl_loss") for name in OBJECTIVE_PARTS]
            loss_keys += ["actor/pg_loss", "actor/kl_loss", "actor/entropy_loss", "actor/papo_kl", "actor/papo_double_entropy"]
            for key in loss_keys:
                if key in sums:
                    metrics[key].append(sums[key])
            if sums.get("entropy_tokens"):
                metrics["actor/entropy"].append(sums["entropy_sum"] / sums["entropy_tokens"])
                if "gap_sum" in sums:
                    metrics["rollout/logprob_gap_mean"].append(sums["gap_sum"] / sums["entropy_tokens"])
                    metrics["rollout/logprob_gap_max"].append(sums["gap_max"])

        return plans, loss_fn, record_metrics

    def backward_mini_batch(self, mini: DataProto, metrics: dict[str, list[float]] | None = None) -> int:
        """Accumulates the gradient of one mini-batch without stepping (`Engine.accumulate` of
        `mini_batch_loss`); returns this rank's number of micro-batches whose loss was not finite."""
        plans, loss_fn, record_metrics = self.mini_batch_loss(mini, metrics if metrics is not None else defaultdict(list))
        nonfinite = self.engine.accumulate(plans, loss_fn)
        record_metrics()
        return nonfinite

    def update_policy(self, data: DataProto, num_mini_batches: int, step: int) -> dict[str, float]:
        """PPO epochs over `num_mini_batches` mini-batches of `data`, each one optimizer step
        accumulated over micro-batches (see `backward_mini_batch`). Without `old_log_probs` in
        `data` the update must be exactly on-policy (one mini-batch, one epoch)."""
        cfg = self.config
        if "old_log_probs" not in data.batch and (num_mini_batches != 1 or cfg.ppo_epochs != 1):
            raise ValueError(
                f"no old_log_probs: only an on-policy update (1 mini-batch, 1 epoch) may skip them, got "
                f"{num_mini_batches} mini-batches x {cfg.ppo_epochs} epochs"
            )
        metrics: dict[str, list[float]] = defaultdict(list)
        for _ in range(cfg.ppo_epochs):
            for indices in np.array_split(np.arange(len(data)), num_mini_batches):
                plans, loss_fn, record_metrics = self.mini_batch_loss(data[indices], metrics)

                def nonfinite_error(count: int) -> str:
                    record_metrics()
                    return (
                        f"step {step}: non-finite actor loss on {count} micro-batch(es) "
                        f"(last pg_loss={metrics['actor/pg_loss'][-1]}); check rewards/advantages for NaN "
                        f"and lower worker.actor.optim.lr"
                    )

                result = self.engine.train_batch(plans, loss_fn, nonfinite_error)
                record_metrics()
                if not result.stepped:  # a non-finite gradient norm skips the step; counted in metrics
                    metrics["actor/skipped_steps"].append(1.0)
                metrics["actor/grad_norm"].append(result.grad_norm)
        metrics["actor/lr"].append(self.engine.lr)
        result = {key: float(np.mean(values)) for key, values in metrics.items()}
        result["actor/optimizer_steps"] = float(len(metrics["actor/grad_norm"]))
        for key in ("rollout/logprob_gap_max", "rollout_corr/ratio_max"):
            if key in metrics:
                result[key] = float(np.max(metrics[key]))
        return result
