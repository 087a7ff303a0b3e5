"""Rollout correction: importance weights between the rollout engine's sampling policy and the
trainer's behaviour policy. Pure torch.

The rollout engine (vLLM, or a separate HF copy) samples with its own kernels and dtype, so the
probability it gave a token, ``pi_rollout``, differs from the probability the trainer computes
for the same weights, ``pi_old``. The PPO ratio is taken against ``pi_old``, so the samples are
slightly off-policy. Yao et al. 2025, "Your Efficient RL Framework Secretly Brings You
Off-Policy RL Training" (fengyao.notion.site/off-policy-rl), correct the gradient with the
importance weight ``w = pi_old / pi_rollout``:

- **TIS** (truncated IS): the loss of each token (or sequence) is multiplied by
  ``min(w, threshold)``, detached; truncation bounds the variance a rare token can add.
- **MIS** (masked IS; Liu et al. 2025, "When Speed Kills Stability: Demystifying RL Collapse
  from the Training-Inference Mismatch"): tokens (or sequences) whose ``w`` leaves
  ``[1 / threshold, threshold]`` are dropped from the loss (weight 0); the rest keep weight 1.

``level="token"`` uses each token's own ratio; ``level="sequence"`` uses the product of the
sequence's token ratios, ``exp(sum_t (log pi_old - log pi_rollout))``, for every token of it
(unbiased for the sequence-level gradient, higher variance).

Shapes: ``bs`` responses, ``L`` the padded response length; every tensor is (bs, L).
"""

from __future__ import annotations

import torch

from verl.algorithms.core_algos import LOG_RATIO_BOUND, _as_bool, _check_same_shape, _zero_outside, masked_mean

ROLLOUT_CORRECTION_MODES: tuple[str, ...] = ("off", "tis", "mis")
ROLLOUT_CORRECTION_LEVELS: tuple[str, ...] = ("token", "sequence")


@torch.no_grad()
def rollout_importance_weights(
    old_log_probs: torch.Tensor,
    rollout_log_probs: torch.Tensor,
    response_mask: torch.Tensor,
    mode: str,
    level: str,
    threshold: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Per-token loss weights that correct for the rollout/trainer mismatch (see the module doc).

    Args:
        old_log_probs: (bs, L) trainer log-probs of the sampled tokens (the PPO behaviour policy).
        rollout_log_probs: (bs, L) the rollout engine's log-probs of the same tokens.
        response_mask: (bs, L) valid response tokens.
        mode: ``tis`` (truncate at ``threshold``) or ``mis`` (mask outside
            ``[1 / threshold, threshold]``).
        level: ``token`` or ``sequence``.
        threshold: > 1.

    Returns:
        weights: (bs, L) detached, float32 or wider, 0 outside the mask. Multiply the per-token
            policy loss by them before aggregation.
        metrics: over valid tokens (token level) or valid sequences (sequence level):
            ``rollout_corr/ratio_mean`` and ``rollout_corr/ratio_max`` of the raw ratio ``w``,
            and ``rollout_corr/truncated_frac`` (TIS) or ``rollout_corr/masked_frac`` (MIS), the
            fraction whose weight was changed.
    """
    if mode not in ("tis", "mis"):
        raise ValueError(f"rollout correction mode must be 'tis' or 'mis' here, got {mode!r}")
    if level not in ROLLOUT_CORRECTION_LEVELS:
        raise ValueError(f"rollout correction level must be one of {ROLLOUT_CORRECTION_LEVELS}, got {level!r}")
    if not threshold > 1.0:
        raise ValueError(f"rollout correction threshold must be > 1, got {threshold}")
    _check_same_shape("old_log_probs", old_log_probs, "rollout_log_probs", rollout_log_probs)
    _check_same_shape("old_log_probs", old_log_probs, "response_mask", response_mask)
    mask = _as_bool(response_mask)
    dtype = torch.promote_types(torch.promote_types(old_log_probs.dtype, rollout_log_probs.dtype), torch.float32)
    log_ratio = _zero_outside(old_log_probs.to(dtype) - rollout_log_probs.to(dtype), mask)
    if level == "sequence":
        log_ratio = log_ratio.sum(-1)  # (bs,)
        unit_mask = mask.any(-1)
    else:
        unit_mask = mask
    ratio = torch.exp(log_ratio.clamp(-LOG_RATIO_BOUND, LOG_RATIO_BOUND))
    if mode == "tis":
        changed = ratio > threshold
        weights = ratio.clamp(max=threshold)
    else:
        changed = (ratio > threshold) | (ratio < 1.0 / threshold)
        weights = (~changed).to(dtype)
    if level == "sequence":
        weights = weights.unsqueeze(-1).expand_as(mask)
    valid_ratios = ratio[unit_mask]
    metrics = {
        "rollout_corr/ratio_mean": masked_mean(ratio, unit_mask).item(),
        "rollout_corr/ratio_max": valid_ratios.max().item() if valid_ratios.numel() else 0.0,
        f"rollout_corr/{'truncated' if mode == 'tis' else 'masked'}_frac": masked_mean(changed.to(dtype), unit_mask).item(),
    }
    return _zero_outside(weights, mask), metrics
