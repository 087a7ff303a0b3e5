"""The RL math of GRPO-family training: advantage estimators, PPO policy loss, KL terms, loss
aggregation and the log-prob/entropy helpers the actor uses. Pure torch.

Shapes and conventions used throughout:

- ``bs`` responses in the batch, ``L`` the padded response length, ``V`` the vocabulary size.
- ``response_mask`` (bs, L): non-zero (``True`` or 1.0) on valid response tokens.
- ``token_level_rewards`` (bs, L): per-token rewards. An outcome reward sits on the last valid
  token; a KL-in-reward penalty (``apply_kl_penalty``) adds a term on every valid token. Outcome
  estimators (GRPO, RLOO, REINFORCE++-baseline) use the sequence score, the sum of the rewards
  over the valid tokens, so the penalty is part of the score exactly as in verl. A non-zero
  reward outside ``response_mask`` is an error (it would otherwise be dropped silently).
- ``group_index`` (bs,): integer prompt-group id; the ``n`` samples of one prompt share an id.
  Ids need not be contiguous or sorted. Group statistics are vectorised over the ids
  (``torch.unique`` + ``index_add_``/``scatter_reduce``), never a Python loop over samples.
- Advantages and returns come back as (bs, L), zero outside ``response_mask``, in the rewards'
  floating dtype promoted to at least float32.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

LOSS_AGG_MODES: tuple[str, ...] = (
    "token-mean",
    "seq-mean-token-sum",
    "seq-mean-token-mean",
    "seq-mean-token-sum-norm",
)
KL_KINDS: tuple[str, ...] = ("kl", "abs", "mse", "low_var_kl", "full")

# exp(20) ~ 4.9e8: far beyond any ratio the clip range lets through, yet finite in float32
# (exp overflows at ~88.7), so a stale or corrupted log-prob cannot turn the loss or its
# gradient into inf/NaN. Outside the bound the clamped token gets no gradient through the ratio.
LOG_RATIO_BOUND = 20.0
# The k3 estimator is clamped to [-10, 10] as in verl; its exponent is bounded like the ratio.
LOW_VAR_KL_BOUND = 10.0
# Denominator floor for masked means: an all-masked selection averages to 0 instead of NaN.
_MASK_TOTAL_FLOOR = 1e-8


# --------------------------------------------------------------------------------------------
# Masked statistics (one set of helpers for every caller)
# --------------------------------------------------------------------------------------------


def _check_same_shape(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(
            f"{name_a} has shape {tuple(a.shape)} but {name_b} has shape {tuple(b.shape)}; they must match"
        )


def _float_dtype(tensor: torch.Tensor) -> torch.dtype:
    """The tensor's dtype promoted to at least float32 (bf16/fp16/int -> float32, float64 stays)."""
    return torch.promote_types(tensor.dtype, torch.float32)


def _as_bool(mask: torch.Tensor) -> torch.Tensor:
    return mask if mask.dtype == torch.bool else mask != 0


def _zero_outside(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # torch.where rather than a product: padded positions may hold -inf/NaN (e.g. log-probs of
    # pad tokens) and 0 * inf is NaN.
    return torch.where(_as_bool(mask), values, torch.zeros((), dtype=values.dtype, device=values.device))


def masked_sum(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum of ``values * mask`` over ``dim`` (all dims when None), ignoring NaN/inf where mask is 0.
    Half-precision values are summed in float32.

    Args:
        values: any shape, floating.
        mask: same shape as ``values``; bool, or float weights.
        dim: dimension to reduce, or None for a scalar.
    """
    _check_same_shape("values", values, "mask", mask)
    values = values.to(_float_dtype(values))
    weighted = _zero_outside(values, mask)
    if mask.dtype != torch.bool:  # float weights; a bool mask is fully applied by the where
        weighted = weighted * mask.to(values.dtype)
    return weighted.sum() if dim is None else weighted.sum(dim)


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Weighted mean of ``values`` over the positions where ``mask`` is non-zero.

    Args:
        values: any shape, floating.
        mask: same shape as ``values``; bool, or float weights.
        dim: dimension to reduce, or None for a scalar over everything.

    Returns:
        The mean (scalar, or ``values`` reduced along ``dim``), float32 or wider; 0 where the mask
        selects nothing.
    """
    total_weight = mask.to(_float_dtype(values))
    total_weight = total_weight.sum() if dim is None else total_weight.sum(dim)
    return masked_sum(values, mask, dim) / total_weight.clamp_min(_MASK_TOTAL_FLOOR)


def masked_var(values: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of ``values`` over the masked positions (a scalar).

    With ``unbiased`` the Bessel correction n/(n-1) uses n = the mask total (the token count for a
    0/1 mask), as ``torch.var``'s default does.

    Raises:
        ValueError: the mask selects nothing, or a single position while ``unbiased``.
    """
    count = float(mask.to(_float_dtype(values)).sum())
    minimum = 2.0 if unbiased else 1.0
    if count < minimum:
        raise ValueError(f"masked_var needs a mask total of at least {minimum:g} (unbiased={unbiased}), got {count:g}")
    mean = masked_mean(values, mask)
    variance = masked_mean((values - mean).square(), mask)
    return variance * (count / (count - 1.0)) if unbiased else variance


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """Normalise ``values`` to unit (unbiased) variance over the masked positions.

    Args:
        values: any shape, floating.
        mask: same shape; bool or float.
        shift_mean: subtract the masked mean (True) or keep it (False: only rescale).
        eps: added to the variance before the square root.

    Returns:
        Same shape as ``values``: ``(values - mean) / sqrt(var + eps)`` (mean added back when
        ``shift_mean`` is False), 0 outside the mask.
    """
    mean = masked_mean(values, mask)
    variance = masked_var(values, mask, unbiased=True)
    whitened = (values - mean) * torch.rsqrt(variance + eps)
    if not shift_mean:
        whitened = whitened + mean
    return _zero_outside(whitened, mask)


# --------------------------------------------------------------------------------------------
# Group statistics and outcome-reward advantage estimators
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GroupStatistics:
    """Each sample's view of its prompt group's scores; every field is (bs,), float64 or int64.

    Attributes:
        size: number of samples in the sample's group.
        mean: group mean score.
        std: group standard deviation, unbiased (n - 1 denominator, ``torch.std``'s default, as
            in verl); 0 for a singleton group, where it is undefined.
        has_spread: the group holds at least two distinct scores. False for singletons and for
            all-equal groups: no estimator can extract a learning signal from them, so every
            estimator here gives them an advantage of exactly 0.
    """

    size: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    has_spread: torch.Tensor


def _check_group_index(group_index: torch.Tensor, batch_size: int) -> None:
    if (
        not isinstance(group_index, torch.Tensor)
        or group_index.dim() != 1
        or group_index.shape[0] != batch_size
        or group_index.is_floating_point()
        or group_index.is_complex()
        or group_index.dtype == torch.bool
    ):
        got = (
            f"{type(group_index).__name__} of dtype {group_index.dtype} and shape {tuple(group_index.shape)}"
            if isinstance(group_index, torch.Tensor)
            else type(group_index).__name__
        )
        raise ValueError(
            f"group_index must be a 1-D integer tensor with one prompt-group id per response "
            f"(length {batch_size}), got {got}"
        )


def group_statistics(scores: torch.Tensor, group_index: torch.Tensor) -> GroupStatistics:
    """Per-group size, mean, unbiased std and spread, broadcast back to each sample.

    Computed in float64 so that the result does not depend on the (non-deterministic on GPU)
    order of the scatter additions at float32 precision.

    Args:
        scores: (bs,) one scalar score per response.
        group_index: (bs,) integer prompt-group ids (any values, any order).
    """
    if scores.dim() != 1:
        raise ValueError(f"scores must be 1-D (bs,), got shape {tuple(scores.shape)}")
    _check_group_index(group_index, scores.shape[0])
    scores = scores.to(torch.float64)
    _, inverse, counts = torch.unique(group_index, return_inverse=True, return_counts=True)
    num_groups = counts.shape[0]
    group_counts = counts.to(torch.float64)

    group_mean = scores.new_zeros(num_groups).index_add_(0, inverse, scores) / group_counts
    squared_deviation = (scores - group_mean[inverse]).square()
    # Two-pass variance (sum of squared deviations), stable where E[x^2] - E[x]^2 is not.
    squared_deviation_sum = scores.new_zeros(num_groups).index_add_(0, inverse, squared_deviation)
    group_var = squared_deviation_sum / (group_counts - 1).clamp_min(1)
    group_max = scores.new_zeros(num_groups).scatter_reduce(0, inverse, scores, reduce="amax", include_self=False)
    group_min = scores.new_zeros(num_groups).scatter_reduce(0, inverse, scores, reduce="amin", include_self=False)
    return GroupStatistics(
        size=counts[inverse],
        mean=group_mean[inverse],
        std=group_var.sqrt()[inverse],
        has_spread=(group_max > group_min)[inverse],
    )


def _sequence_scores(token_level_rewards: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """(bs, L) rewards -> (bs,) float64 score per response, the sum over its valid tokens.

    Raises ValueError for a non-zero reward outside the mask (a misplaced outcome reward would
    otherwise be dropped silently) and for a non-finite score. Costs three passes over (bs, L),
    which dominate an estimator's run time at rollout sizes.
    """
    _check_same_shape("token_level_rewards", token_level_rewards, "response_mask", response_mask)
    if token_level_rewards.dim() != 2:
        raise ValueError(f"token_level_rewards must be (bs, L), got shape {tuple(token_level_rewards.shape)}")
    outside = token_level_rewards.masked_fill(_as_bool(response_mask), 0)
    if int(torch.count_nonzero(outside)) > 0:
        rows = (outside != 0).any(dim=-1).nonzero().flatten()[:10].tolist()
        raise ValueError(
            f"token_level_rewards has non-zero values outside response_mask in rows {rows} "
            "(first 10): put the outcome reward on the last valid response token"
        )
    # Everything outside the mask is 0 now, so a plain sum is the masked sum; NaN/inf on a valid
    # token makes its row's sum non-finite.
    scores = token_level_rewards.to(_float_dtype(token_level_rewards)).sum(dim=-1)
    non_finite = ~torch.isfinite(scores)
    if bool(non_finite.any()):
        rows = non_finite.nonzero().flatten()[:10].tolist()
        raise ValueError(f"token_level_rewards has NaN/inf (or sums that overflow) in rows {rows} (first 10)")
    return scores.to(torch.float64)


def _broadcast_to_tokens(per_sample: torch.Tensor, response_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(bs,) finite values -> (bs, L): the sample's value on each valid token, 0 elsewhere."""
    # A product (one pass) is safe here: the values are finite, and float * bool promotes.
    return per_sample.to(dtype).unsqueeze(-1) * _as_bool(response_mask)


def _grpo_sample_advantages(
    scores: torch.Tensor, group_index: torch.Tensor, norm_adv_by_std: bool, eps: float
) -> torch.Tensor:
    """(bs,) scores -> (bs,) float64 GRPO advantages (see ``compute_grpo_outcome_advantage``)."""
    stats = group_statistics(scores, group_index)
    advantages = scores.to(torch.float64) - stats.mean
    if norm_adv_by_std:
        advantages = advantages / (stats.std + eps)
    return torch.where(stats.has_spread, advantages, torch.zeros_like(advantages))


def compute_grpo_outcome_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    group_index: torch.Tensor,
    norm_adv_by_std: bool = True,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GRPO advantage (Shao et al. 2024, DeepSeekMath, arXiv 2402.03300): for score r_i,
    ``A_i = (r_i - mean_group) / (std_group + eps)``, the same on every token of the response.

    ``std_group`` is the unbiased sample std (n - 1 denominator), as verl uses (``torch.std``).
    With ``norm_adv_by_std=False`` the advantage is only mean-centred: Dr. GRPO (Liu et al. 2025,
    "Understanding R1-Zero-Like Training", arXiv 2503.20783), which removes the std term's bias
    towards groups of low reward variance.

    Groups without spread get 0: all-equal scores carry no signal, and a singleton group has no
    baseline (verl instead uses mean 0, std 1 for a singleton, which hands it its raw score as
    advantage: a biased, un-normalised update on a different scale than every other sample).

    Args:
        token_level_rewards: (bs, L); the score is the sum over valid tokens.
        response_mask: (bs, L).
        group_index: (bs,) integer prompt-group ids.
        norm_adv_by_std: divide by the group std (GRPO) or not (Dr. GRPO).
        eps: added to the std.

    Returns:
        advantages, returns: both (bs, L), equal (an outcome estimator has no separate return).
    """
    scores = _sequence_scores(token_level_rewards, response_mask)
    sample_advantages = _grpo_sample_advantages(scores, group_index, norm_adv_by_std, eps)
    advantages = _broadcast_to_tokens(sample_advantages, response_mask, _float_dtype(token_level_rewards))
    return advantages, advantages


def compute_rloo_outcome_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    group_index: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """RLOO advantage (Kool et al. 2019 "Buy 4 REINFORCE samples, get a baseline for free!";
    Ahmadian et al. 2024, arXiv 2402.14740): each score minus the mean of the *other* samples of
    its group, ``A_i = r_i - (sum_g - r_i) / (n - 1)``, computed as the identical
    ``n / (n - 1) * (r_i - mean_g)``. Singleton and all-equal groups get 0.

    Args:
        token_level_rewards: (bs, L); the score is the sum over valid tokens.
        response_mask: (bs, L).
        group_index: (bs,) integer prompt-group ids.

    Returns:
        advantages, returns: both (bs, L), equal.
    """
    scores = _sequence_scores(token_level_rewards, response_mask)
    stats = group_statistics(scores, group_index)
    group_size = stats.size.to(torch.float64)
    leave_one_out = (scores - stats.mean) * group_size / (group_size - 1).clamp_min(1)
    sample_advantages = torch.where(stats.has_spread, leave_one_out, torch.zeros_like(leave_one_out))
    advantages = _broadcast_to_tokens(sample_advantages, response_mask, _float_dtype(token_level_rewards))
    return advantages, advantages


def discounted_returns(token_level_rewards: torch.Tensor, response_mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """Reward-to-go ``G_t = sum_{k >= t} gamma^(k - t) r_k`` over valid tokens.

    Discounting counts token positions. The loop runs over the L positions (each step a (bs,)
    vector op), since the closed form via gamma^-t overflows for long responses.

    Args:
        token_level_rewards: (bs, L).
        response_mask: (bs, L).
        gamma: discount in [0, 1].

    Returns:
        (bs, L) returns, 0 outside the mask.
    """
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must be in [0, 1], got {gamma}")
    rewards = _zero_outside(token_level_rewards.to(_float_dtype(token_level_rewards)), response_mask)
    if gamma == 1.0:
        returns = rewards.flip(-1).cumsum(-1).flip(-1)
    else:
        returns = torch.empty_like(rewards)
        running = torch.zeros_like(rewards[:, 0])
        for position in range(rewards.shape[-1] - 1, -1, -1):
            running = rewards[:, position] + gamma * running
            returns[:, position] = running
    return _zero_outside(returns, response_mask)


def compute_reinforce_plus_plus_outcome_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    gamma: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """REINFORCE++ (Hu 2025, arXiv 2501.03262): discounted token returns, whitened over all valid
    tokens of the batch (no critic, no group baseline).

    Args:
        token_level_rewards: (bs, L), typically the outcome reward plus a per-token KL penalty.
        response_mask: (bs, L).
        gamma: discount in [0, 1].

    Returns:
        advantages: (bs, L) whitened returns; returns: (bs, L) raw discounted returns.
    """
    _sequence_scores(token_level_rewards, response_mask)  # validation only: placement and finiteness
    returns = discounted_returns(token_level_rewards, response_mask, gamma)
    return masked_whiten(returns, response_mask), returns


def compute_reinforce_plus_plus_baseline_outcome_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    group_index: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """REINFORCE++-baseline (Hu 2025, arXiv 2501.03262): subtract the group mean from each score,
    then whiten the per-token advantages over the batch's valid tokens.

    Only groups with spread enter the whitening statistics and get a non-zero advantage.
    (verl whitens all tokens, so a singleton or all-correct group's 0 becomes ``-mean / std``
    after the shift: a push on samples that carry no signal.) A batch without any group with
    spread gets all-zero advantages.

    Args:
        token_level_rewards: (bs, L); the score is the sum over valid tokens.
        response_mask: (bs, L).
        group_index: (bs,) integer prompt-group ids.

    Returns:
        advantages, returns: both (bs, L), equal.
    """
    scores = _sequence_scores(token_level_rewards, response_mask)
    stats = group_statistics(scores, group_index)
    dtype = _float_dtype(token_level_rewards)
    centered = _broadcast_to_tokens(scores - stats.mean, response_mask, dtype)
    informative_tokens = _as_bool(response_mask) & stats.has_spread.unsqueeze(-1)
    if int(informative_tokens.sum()) < 2:
        zeros = torch.zeros_like(centered)
        return zeros, zeros
    advantages = masked_whiten(centered, informative_tokens)
    return advantages, advantages


def compute_remax_outcome_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    baseline_scores: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """ReMax (Li et al. 2023, arXiv 2310.10505, Algorithm 1): REINFORCE with the reward of the
    greedy response to the same prompt as baseline, ``A_i = r_i - r(x_i, greedy(x_i))``, the
    same on every token of the response (outcome reward, gamma = 1).

    Args:
        token_level_rewards: (bs, L); the score is the sum over valid tokens.
        response_mask: (bs, L).
        baseline_scores: (bs,) the greedy response's score for each row's prompt (rows of one
            prompt share it).

    Returns:
        advantages: (bs, L); returns: (bs, L) the raw scores on every valid token.
    """
    scores = _sequence_scores(token_level_rewards, response_mask)
    if baseline_scores.shape != scores.shape:
        raise ValueError(
            f"baseline_scores must have shape {tuple(scores.shape)} (one per response), got {tuple(baseline_scores.shape)}"
        )
    if not bool(torch.isfinite(baseline_scores).all()):
        rows = (~torch.isfinite(baseline_scores)).nonzero().flatten()[:10].tolist()
        raise ValueError(f"baseline_scores has NaN/inf in rows {rows} (first 10)")
    dtype = _float_dtype(token_level_rewards)
    advantages = _broadcast_to_tokens(scores - baseline_scores.to(torch.float64), response_mask, dtype)
    return advantages, _broadcast_to_tokens(scores, response_mask, dtype)


@torch.no_grad()
def compute_gae_advantage_return(
    token_level_rewards: torch.Tensor,
    values: torch.Tensor,
    response_mask: torch.Tensor,
    gamma: float,
    lam: float,
    whiten: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE, generalised advantage estimation (Schulman et al. 2016, arXiv 1506.02438) with a
    learned critic, as in PPO for RLHF (Ouyang et al. 2022).

    Over the valid response tokens, with ``V`` = 0 after the last one:
    ``delta_t = r_t + gamma * V_{t+1} - V_t``, ``A_t = delta_t + gamma * lam * A_{t+1}``,
    returns ``R_t = A_t + V_t`` (the critic's regression target). The advantages are then
    whitened over the batch's valid tokens (as in verl), unless ``whiten`` is False.

    Args:
        token_level_rewards: (bs, L) rewards (outcome on the last valid token, KL penalty per token).
        values: (bs, L) the critic's values of the response positions (before each token's reward).
        response_mask: (bs, L), right-padded (valid tokens first).
        gamma: discount in [0, 1].
        lam: GAE lambda in [0, 1] (1: Monte-Carlo returns minus V; 0: one-step TD).
        whiten: normalise the advantages to mean 0, unit variance.

    Returns:
        advantages, returns: (bs, L) each, 0 outside the mask.
    """
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must be in [0, 1], got {gamma}")
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must be in [0, 1], got {lam}")
    _check_same_shape("token_level_rewards", token_level_rewards, "values", values)
    _sequence_scores(token_level_rewards, response_mask)  # validation only: placement and finiteness
    dtype = torch.promote_types(_float_dtype(token_level_rewards), _float_dtype(values))
    rewards = _zero_outside(token_level_rewards.to(dtype), response_mask)
    values = _zero_outside(values.to(dtype), response_mask)
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros_like(rewards[:, 0])
    next_advantage = torch.zeros_like(rewards[:, 0])
    for position in range(rewards.shape[-1] - 1, -1, -1):
        delta = rewards[:, position] + gamma * next_value - values[:, position]
        next_advantage = delta + gamma * lam * next_advantage
        advantages[:, position] = next_advantage
        next_value = values[:, position]
    # Padding after a row's end holds V = r = 0, so it contributes delta = 0 and A = 0 there.
    returns = _zero_outside(advantages + values, response_mask)
    advantages = masked_whiten(advantages, response_mask) if whiten else _zero_outside(advantages, response_mask)
    return advantages, returns


def compute_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    response_mask: torch.Tensor,
    clip_range_value: float,
    loss_agg_mode: str,
    max_response_length: int | None = None,
    normalizer: float | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO's clipped value loss (Schulman et al. 2017; the form of OpenAI baselines / verl):
    ``0.5 * max((V - R)^2, (V_old + clip(V - V_old, -c, c) - R)^2)`` per token, aggregated like
    the policy loss.

    Args:
        values: (bs, L) the critic's current predictions (carry the gradient).
        old_values: (bs, L) the predictions when the batch was collected.
        returns: (bs, L) GAE returns.
        response_mask: (bs, L).
        clip_range_value: c > 0.
        loss_agg_mode, max_response_length, normalizer: see ``agg_loss``.

    Returns:
        vf_loss: scalar; metrics: ``vf_clipfrac`` (tokens where the clipped term is the larger).
    """
    if not clip_range_value > 0:
        raise ValueError(f"clip_range_value must be > 0, got {clip_range_value}")
    _check_same_shape("values", values, "old_values", old_values)
    _check_same_shape("values", values, "returns", returns)
    _check_same_shape("values", values, "response_mask", response_mask)
    clipped_values = old_values + (values - old_values).clamp(-clip_range_value, clip_range_value)
    unclipped_loss = (values - returns).square()
    clipped_loss = (clipped_values - returns).square()
    token_loss = 0.5 * _zero_outside(torch.maximum(unclipped_loss, clipped_loss), response_mask)
    vf_loss = agg_loss(token_loss, response_mask, loss_agg_mode, max_response_length, normalizer)
    with torch.no_grad():
        clipfrac = masked_mean((clipped_loss > unclipped_loss).to(token_loss.dtype), response_mask).item()
    return vf_loss, {"vf_clipfrac": clipfrac}


def compute_multi_reward_advantages(
    component_scores: dict[str, torch.Tensor],
    weights: dict[str, float],
    group_index: torch.Tensor,
    response_mask: torch.Tensor,
    norm_adv_by_std: bool = True,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Weighted sum of separately group-normalised GRPO advantages, one per reward component.

    ``A_i = sum_c w_c * GRPO(r^c)_i``. This is the objective of Vision-SR1 (Li et al. 2025,
    arXiv 2508.19652, v2): the answer reward and the visual (self-)reward are normalised
    separately and weighted 0.5/0.5, so neither component's scale or variance dominates the
    other, unlike normalising their sum. With one component of weight 1 it equals
    ``compute_grpo_outcome_advantage``.

    Args:
        component_scores: name -> (bs,) scores of that component.
        weights: name -> weight; exactly the same names as ``component_scores``.
        group_index: (bs,) integer prompt-group ids.
        response_mask: (bs, L).
        norm_adv_by_std: per component, divide by the group std (GRPO) or not (Dr. GRPO).
        eps: added to each group std.

    Returns:
        (bs, L) advantages, 0 outside the mask.
    """
    if not component_scores:
        raise ValueError("component_scores is empty: give at least one reward component")
    if set(component_scores) != set(weights):
        raise ValueError(
            f"reward components {sorted(component_scores)} and weights {sorted(weights)} must name the same components"
        )
    if response_mask.dim() != 2:
        raise ValueError(f"response_mask must be (bs, L), got shape {tuple(response_mask.shape)}")
    batch_size = response_mask.shape[0]
    total = torch.zeros(batch_size, dtype=torch.float64, device=response_mask.device)
    dtype = torch.float32
    for name, scores in component_scores.items():
        if scores.shape != (batch_size,):
            raise ValueError(f"component_scores[{name!r}] must have shape ({batch_size},), got {tuple(scores.shape)}")
        if not bool(torch.isfinite(scores).all()):
            rows = (~torch.isfinite(scores)).nonzero().flatten()[:10].tolist()
            raise ValueError(f"component_scores[{name!r}] has NaN/inf in rows {rows} (first 10)")
        if not math.isfinite(weights[name]):
            raise ValueError(f"weights[{name!r}] must be finite, got {weights[name]}")
        dtype = torch.promote_types(dtype, _float_dtype(scores))
        total += weights[name] * _grpo_sample_advantages(scores, group_index, norm_adv_by_std, eps)
    return _broadcast_to_tokens(total, response_mask, dtype)


AdvantageEstimatorFn = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, float, bool, float], tuple[torch.Tensor, torch.Tensor]
]
"""(token_level_rewards, response_mask, group_index, gamma, norm_adv_by_std, eps) -> (adv, ret)."""

ADVANTAGE_ESTIMATORS: dict[str, AdvantageEstimatorFn] = {
    "grpo": lambda rewards, mask, groups, _gamma, norm_by_std, eps: compute_grpo_outcome_advantage(
        rewards, mask, groups, norm_by_std, eps
    ),
    "rloo": lambda rewards, mask, groups, _gamma, _norm_by_std, _eps: compute_rloo_outcome_advantage(
        rewards, mask, groups
    ),
    "reinforce_plus_plus": lambda rewards, mask, _groups, gamma, _norm_by_std, _eps: (
        compute_reinforce_plus_plus_outcome_advantage(rewards, mask, gamma)
    ),
    "reinforce_plus_plus_baseline": lambda rewards, mask, groups, _gamma, _norm_by_std, _eps: (
        compute_reinforce_plus_plus_baseline_outcome_advantage(rewards, mask, groups)
    ),
}
"""Estimator name -> adapter with the uniform signature used by ``compute_advantages``."""


@torch.no_grad()
def compute_advantages(
    name: str,
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    group_index: torch.Tensor,
    gamma: float = 1.0,
    norm_adv_by_std: bool = True,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the advantage estimator called ``name`` (a key of ``ADVANTAGE_ESTIMATORS``).

    Each estimator uses only the arguments it needs: ``gamma`` only REINFORCE++;
    ``norm_adv_by_std`` and ``eps`` only GRPO; ``group_index`` all but REINFORCE++.

    Args:
        name: "grpo" | "rloo" | "reinforce_plus_plus" | "reinforce_plus_plus_baseline".
        token_level_rewards: (bs, L).
        response_mask: (bs, L).
        group_index: (bs,) integer prompt-group ids.

    Returns:
        advantages, returns: (bs, L) each, 0 outside the mask.
    """
    if name not in ADVANTAGE_ESTIMATORS:
        raise ValueError(f"unknown advantage estimator {name!r}; valid names: {', '.join(ADVANTAGE_ESTIMATORS)}")
    return ADVANTAGE_ESTIMATORS[name](token_level_rewards, response_mask, group_index, gamma, norm_adv_by_std, eps)


# --------------------------------------------------------------------------------------------
# Loss aggregation and the PPO policy loss
# --------------------------------------------------------------------------------------------


def agg_loss(
    loss_mat: torch.Tensor,
    loss_mask: torch.Tensor,
    mode: str,
    max_response_length: int | None = None,
    normalizer: float | None = None,
) -> torch.Tensor:
    """Reduce a per-token loss to a scalar.

    Modes:
        ``token-mean``: mean over all valid tokens of the batch (DAPO, Yu et al. 2025,
            arXiv 2503.14476: every token weighs the same, long responses are not diluted).
        ``seq-mean-token-sum``: per-sequence sum over tokens, mean over sequences.
        ``seq-mean-token-mean``: per-sequence token mean, mean over sequences (original GRPO).
        ``seq-mean-token-sum-norm``: per-sequence sum divided by the constant
            ``max_response_length``, mean over sequences (Dr. GRPO, Liu et al. 2025,
            arXiv 2503.20783: no length-dependent normalisation). verl divides the batch sum by
            the padded length without dividing by the number of sequences; here the result is a
            per-sequence mean like the other seq-mean modes, so the loss scale does not grow with
            the micro-batch size.

    The seq-mean modes average over the sequences that have at least one valid token, so
    all-padding rows (e.g. filler in a micro-batch) do not dilute the loss.

    Args:
        loss_mat: (bs, L) per-token loss.
        loss_mask: (bs, L) bool or float.
        mode: one of ``LOSS_AGG_MODES``.
        max_response_length: the constant divisor of ``seq-mean-token-sum-norm`` (the configured
            maximum response length); required there, unused by the other modes.
        normalizer: when given, the sum (of token losses for ``token-mean``, of sequence losses
            for the seq-mean modes) is divided by this count instead of the count in
            ``loss_mask``. Gradient accumulation passes the count of the whole mini-batch
            (all micro-batches, all ranks), so the summed micro-batch losses equal the loss of
            the mini-batch however it is split.

    Returns:
        Scalar loss.
    """
    if mode not in LOSS_AGG_MODES:
        raise ValueError(f"unknown loss aggregation mode {mode!r}; valid modes: {', '.join(LOSS_AGG_MODES)}")
    _check_same_shape("loss_mat", loss_mat, "loss_mask", loss_mask)
    if normalizer is not None and not normalizer > 0:
        raise ValueError(f"agg_loss normalizer must be > 0, got {normalizer}")
    if mode == "token-mean":
        if normalizer is not None:
            return masked_sum(loss_mat, loss_mask) / normalizer
        return masked_mean(loss_mat, loss_mask)

    tokens_per_sequence = loss_mask.to(loss_mat.dtype).sum(-1)
    sequence_mask = tokens_per_sequence > 0
    if mode == "seq-mean-token-mean":
        sequence_losses = masked_mean(loss_mat, loss_mask, dim=-1)
    elif mode == "seq-mean-token-sum":
        sequence_losses = masked_sum(loss_mat, loss_mask, dim=-1)
    else:
        if max_response_length is None or max_response_length <= 0:
            raise ValueError(
                f"loss aggregation mode 'seq-mean-token-sum-norm' needs a positive max_response_length, "
                f"got {max_response_length}"
            )
        sequence_losses = masked_sum(loss_mat, loss_mask, dim=-1) / max_response_length
    if normalizer is not None:
        return masked_sum(sequence_losses, sequence_mask) / normalizer
    return masked_mean(sequence_losses, sequence_mask)


def _policy_log_ratio(
    old_log_probs: torch.Tensor,
    log_probs: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    token_weights: torch.Tensor | None,
) -> torch.Tensor:
    """Shape checks shared by the policy losses; (bs, L) ``log_probs - old_log_probs`` clamped to
    +-``LOG_RATIO_BOUND``."""
    _check_same_shape("log_probs", log_probs, "old_log_probs", old_log_probs)
    _check_same_shape("log_probs", log_probs, "advantages", advantages)
    _check_same_shape("log_probs", log_probs, "response_mask", response_mask)
    if token_weights is not None:
        _check_same_shape("log_probs", log_probs, "token_weights", token_weights)
    return (log_probs - old_log_probs).clamp(-LOG_RATIO_BOUND, LOG_RATIO_BOUND)


def _weighted(token_loss: torch.Tensor, token_weights: torch.Tensor | None) -> torch.Tensor:
    return token_loss if token_weights is None else token_loss * token_weights.detach().to(token_loss.dtype)


def compute_policy_loss(
    old_log_probs: torch.Tensor,
    log_probs: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    clip_ratio_low: float,
    clip_ratio_high: float,
    clip_ratio_dual: float,
    loss_agg_mode: str,
    max_response_length: int | None = None,
    normalizer: float | None = None,
    token_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO clipped surrogate (Schulman et al. 2017, arXiv 1707.06347) with clip-higher and
    dual-clip.

    Per token, with ``ratio = exp(log_probs - old_log_probs)``:
    ``loss = max(-A * ratio, -A * clip(ratio, 1 - clip_ratio_low, 1 + clip_ratio_high))``.
    ``clip_ratio_high > clip_ratio_low`` is DAPO's clip-higher (Yu et al. 2025, arXiv 2503.14476),
    which leaves low-probability tokens room to grow and so keeps entropy from collapsing.
    For ``A < 0`` dual-clip (Ye et al. 2020, arXiv 1912.09729) caps the loss at
    ``-A * clip_ratio_dual``: a token whose ratio has run far above 1 cannot produce an unbounded
    update. Pass ``math.inf`` to disable it.

    The log-ratio is clamped to +-``LOG_RATIO_BOUND`` (20) before ``exp``; see that constant.

    Args:
        old_log_probs: (bs, L) log-probs of the sampled tokens under the behaviour policy.
        log_probs: (bs, L) log-probs under the current policy (carries the gradient).
        advantages: (bs, L).
        response_mask: (bs, L).
        clip_ratio_low: eps_low in [0, 1).
        clip_ratio_high: eps_high >= 0.
        clip_ratio_dual: c > 1.
        loss_agg_mode: see ``agg_loss``.
        max_response_length: see ``agg_loss`` (``seq-mean-token-sum-norm`` only).
        normalizer: see ``agg_loss`` (the mini-batch's global token or sequence count).
        token_weights: optional (bs, L) detached per-token loss weights applied before
            aggregation (rollout correction, ``verl.algorithms.rollout_correction``).

    Returns:
        pg_loss: scalar.
        metrics: token means over the mask: ``pg_clipfrac`` (tokens where the clipped term is
            the active one, i.e. the ratio was clipped against the advantage's direction),
            ``pg_clipfrac_lower`` (tokens where the dual-clip cap is active), ``ppo_kl``
            (the k1 estimate of KL(old || current), ``mean(old_log_probs - log_probs)``).
    """
    _check_clip_range(clip_ratio_low, clip_ratio_high)
    if not clip_ratio_dual > 1.0:
        raise ValueError(f"clip_ratio_dual must be > 1 (dual-clip bound c), got {clip_ratio_dual}")
    log_ratio = _policy_log_ratio(old_log_probs, log_probs, advantages, response_mask, token_weights)
    ratio = torch.exp(log_ratio)
    unclipped_loss = -advantages * ratio
    clipped_loss = -advantages * ratio.clamp(1.0 - clip_ratio_low, 1.0 + clip_ratio_high)
    ppo_loss = torch.maximum(unclipped_loss, clipped_loss)
    dual_clip_loss = -advantages * clip_ratio_dual
    negative_advantage = advantages < 0
    token_loss = torch.where(negative_advantage, torch.minimum(ppo_loss, dual_clip_loss), ppo_loss)

    pg_loss = agg_loss(_weighted(token_loss, token_weights), response_mask, loss_agg_mode, max_response_length, normalizer)
    with torch.no_grad():
        # One stacked transfer instead of three .item() device syncs per micro-batch.
        clipfrac, clipfrac_lower, ppo_kl = torch.stack(
            [
                masked_mean((clipped_loss > unclipped_loss).to(log_ratio.dtype), response_mask),
                masked_mean((negative_advantage & (ppo_loss > dual_clip_loss)).to(log_ratio.dtype), response_mask),
                masked_mean(-log_ratio, response_mask),
            ]
        ).tolist()
    metrics = {"pg_clipfrac": clipfrac, "pg_clipfrac_lower": clipfrac_lower, "ppo_kl": ppo_kl}
    return pg_loss, metrics


def compute_gspo_policy_loss(
    old_log_probs: torch.Tensor,
    log_probs: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    clip_ratio_low: float,
    clip_ratio_high: float,
    loss_agg_mode: str,
    max_response_length: int | None = None,
    normalizer: float | None = None,
    token_weights: torch.Tensor | None = None,
    token_level: bool = False,
) -> tuple[torch.Tensor, dict[str, float]]:
    """GSPO, Group Sequence Policy Optimization (Zheng et al. 2025, arXiv 2507.18071): the
    importance ratio and its clipping are per sequence.

    ``s_i = exp(mean_t (log_probs_it - old_log_probs_it))`` (length-normalised sequence ratio),
    ``A_i`` the sequence's advantage (the mean of its token advantages; outcome estimators put
    the same value on every token), and the sequence loss
    ``max(-A_i * s_i, -A_i * clip(s_i, 1 - clip_ratio_low, 1 + clip_ratio_high))`` sits on every
    valid token of the sequence. With ``loss_agg_mode="seq-mean-token-mean"`` the aggregate is
    the paper's ``1/G sum_i loss_i``. The paper's clip ranges are ~1e-4 wide (3e-4 / 4e-4), since
    ``s_i`` is a per-token geometric mean.

    ``token_level=True`` is GSPO-token: ``s_it = sg[s_i] * pi(y_it) / sg[pi(y_it)]`` (the value
    of ``s_i``, the gradient of one token), clipped on that value, with each token's own
    advantage. With equal advantages over a sequence and ``seq-mean-token-mean`` it has the same
    loss and gradient as GSPO.

    Args:
        see ``compute_policy_loss`` (no dual-clip here).
        token_level: GSPO-token instead of GSPO.

    Returns:
        pg_loss: scalar.
        metrics: ``pg_clipfrac`` (fraction of valid sequences, or tokens for GSPO-token, whose
            clipped term is active) and ``ppo_kl`` (token-mean k1 estimate).
    """
    _check_clip_range(clip_ratio_low, clip_ratio_high)
    log_ratio = _policy_log_ratio(old_log_probs, log_probs, advantages, response_mask, token_weights)
    mask = _as_bool(response_mask)
    sequence_mask = mask.any(-1)
    # The per-sequence mean log-ratio (bs,), bounded again: it is the exponent of s_i.
    sequence_log_ratio = masked_mean(log_ratio, mask, dim=-1).clamp(-LOG_RATIO_BOUND, LOG_RATIO_BOUND)
    if token_level:
        # sg[s_i] * pi / sg[pi]: the value of s_i, the gradient of log pi of this token only.
        # Padding zeroed first: a -inf there would make exp's backward 0 * NaN.
        valid_log_probs = _zero_outside(log_probs, mask)
        ratio = torch.exp(sequence_log_ratio.detach().unsqueeze(-1) + valid_log_probs - valid_log_probs.detach())
        token_advantages = advantages
        unit_mask = mask
    else:
        ratio = torch.exp(sequence_log_ratio)
        token_advantages = masked_mean(advantages, mask, dim=-1)
        unit_mask = sequence_mask
    unclipped_loss = -token_advantages * ratio
    clipped_loss = -token_advantages * ratio.clamp(1.0 - clip_ratio_low, 1.0 + clip_ratio_high)
    loss = torch.maximum(unclipped_loss, clipped_loss)
    token_loss = loss if token_level else loss.unsqueeze(-1).expand_as(log_ratio)
    token_loss = _zero_outside(token_loss, mask)
    pg_loss = agg_loss(_weighted(token_loss, token_weights), response_mask, loss_agg_mode, max_response_length, normalizer)
    with torch.no_grad():
        clipfrac, ppo_kl = torch.stack(
            [
                masked_mean((clipped_loss > unclipped_loss).to(log_ratio.dtype), unit_mask),
                masked_mean(-log_ratio, response_mask),
            ]
        ).tolist()
    return pg_loss, {"pg_clipfrac": clipfrac, "ppo_kl": ppo_kl}


def compute_cispo_policy_loss(
    old_log_probs: torch.Tensor,
    log_probs: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    clip_ratio_low: float,
    clip_ratio_high: float,
    loss_agg_mode: str,
    max_response_length: int | None = None,
    normalizer: float | None = None,
    token_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """CISPO, Clipped IS-weight Policy Optimization (MiniMax-M1, arXiv 2506.13585, eq. 4):
    clip the importance weight, not the update, so every token keeps a gradient.

    Per token, ``loss = -sg(clip(ratio, 1 - clip_ratio_low, 1 + clip_ratio_high)) * A * log_probs``
    with ``sg`` the stop-gradient: the gradient is ``-clip(ratio) * A * grad log pi`` (REINFORCE
    weighted by the bounded IS weight), also for tokens PPO's clip would silence. The paper
    aggregates with the token mean (``token-mean``) and has no lower bound: ``clip_ratio_low=1``
    (the config's default for cispo) floors the weight at 0, which no ratio reaches.

    Args:
        see ``compute_policy_loss`` (no dual-clip here).

    Returns:
        pg_loss: scalar (its value is not a surrogate objective; its gradient is).
        metrics: ``pg_clipfrac`` (token fraction whose IS weight was clipped, either side) and
            ``ppo_kl`` (token-mean k1 estimate).
    """
    _check_clip_range(clip_ratio_low, clip_ratio_high)
    log_ratio = _policy_log_ratio(old_log_probs, log_probs, advantages, response_mask, token_weights)
    ratio = torch.exp(log_ratio.detach())
    clipped_ratio = ratio.clamp(1.0 - clip_ratio_low, 1.0 + clip_ratio_high)
    # log_probs may be -inf/NaN at padding: zero it before the product (0 * inf is NaN).
    token_loss = -clipped_ratio * advantages * _zero_outside(log_probs, response_mask)
    pg_loss = agg_loss(_weighted(token_loss, token_weights), response_mask, loss_agg_mode, max_response_length, normalizer)
    with torch.no_grad():
        clipfrac, ppo_kl = torch.stack(
            [
                masked_mean((clipped_ratio != ratio).to(log_ratio.dtype), response_mask),
                masked_mean(-log_ratio, response_mask),
            ]
        ).tolist()
    return pg_loss, {"pg_clipfrac": clipfrac, "ppo_kl": ppo_kl}


def _check_clip_range(clip_ratio_low: float, clip_ratio_high: float) -> None:
    # 1 puts the lower bound at 0, below every ratio: no lower clip (CISPO's default).
    if not 0.0 <= clip_ratio_low <= 1.0:
        raise ValueError(f"clip_ratio_low must be in [0, 1], got {clip_ratio_low}")
    if clip_ratio_high < 0.0:
        raise ValueError(f"clip_ratio_high must be >= 0, got {clip_ratio_high}")


POLICY_LOSSES: tuple[str, ...] = ("ppo", "gspo", "gspo_token", "cispo")


def compute_policy_loss_by_name(
    name: str,
    old_log_probs: torch.Tensor,
    log_probs: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    clip_ratio_low: float,
    clip_ratio_high: float,
    clip_ratio_dual: float,
    loss_agg_mode: str,
    max_response_length: int | None = None,
    normalizer: float | None = None,
    token_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The policy loss called ``name`` (one of ``POLICY_LOSSES``): ``ppo`` is
    ``compute_policy_loss`` (clip-higher, dual-clip), ``gspo``/``gspo_token`` are
    ``compute_gspo_policy_loss``, ``cispo`` is ``compute_cispo_policy_loss``. ``clip_ratio_dual``
    is used by ``ppo`` only."""
    common = dict(
        old_log_probs=old_log_probs, log_probs=log_probs, advantages=advantages, response_mask=response_mask,
        clip_ratio_low=clip_ratio_low, clip_ratio_high=clip_ratio_high, loss_agg_mode=loss_agg_mode,
        max_response_length=max_response_length, normalizer=normalizer, token_weights=token_weights,
    )
    if name == "ppo":
        return compute_policy_loss(clip_ratio_dual=clip_ratio_dual, **common)
    if name in ("gspo", "gspo_token"):
        return compute_gspo_policy_loss(token_level=name == "gspo_token", **common)
    if name == "cispo":
        return compute_cispo_policy_loss(**common)
    raise ValueError(f"unknown policy loss {name!r}; valid names: {', '.join(POLICY_LOSSES)}")


# --------------------------------------------------------------------------------------------
# KL divergence: estimators, KL as a loss, KL in the reward, coefficient controllers
# --------------------------------------------------------------------------------------------


def kl_penalty(log_probs: torch.Tensor, ref_log_probs: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-token estimate of KL(policy || reference), computed in float32 or wider.

    Sampled-token estimators (Schulman 2020, "Approximating KL divergence",
    http://joschu.net/blog/kl-approx.html), with ``x = log_probs - ref_log_probs`` (bs, L):

    - ``kl`` (k1): ``x``. Unbiased, high variance, can be negative per token.
    - ``abs``: ``|x|``.
    - ``mse`` (k2): ``x^2 / 2``. Low variance, biased.
    - ``low_var_kl`` (k3): ``exp(-x) - (-x) - 1 >= 0``. Unbiased and low variance; the exponent
      is clamped to +-``LOG_RATIO_BOUND`` and the result to [-10, 10], as in verl.
    - ``full``: the exact ``sum_v p(v) (log p(v) - log ref(v))`` over the vocabulary. Here both
      inputs are (bs, L, V) over the vocabulary, either logits or log-probs (both are passed
      through ``log_softmax``, which leaves log-probs unchanged). Returns (bs, L).

    Args:
        log_probs: (bs, L) sampled-token log-probs of the policy, or (bs, L, V) for ``full``.
        ref_log_probs: same shape, the reference model's.
        kind: one of ``KL_KINDS``.

    Returns:
        (bs, L) per-token KL estimate.
    """
    if kind not in KL_KINDS:
        raise ValueError(f"unknown KL kind {kind!r}; valid kinds: {', '.join(KL_KINDS)}")
    _check_same_shape("log_probs", log_probs, "ref_log_probs", ref_log_probs)
    dtype = torch.promote_types(_float_dtype(log_probs), _float_dtype(ref_log_probs))
    log_probs, ref_log_probs = log_probs.to(dtype), ref_log_probs.to(dtype)
    if kind == "full":
        if log_probs.dim() != 3:
            raise ValueError(
                f"KL kind 'full' needs (bs, L, V) distributions over the vocabulary, got shape {tuple(log_probs.shape)}"
            )
        policy_log_probs = F.log_softmax(log_probs, dim=-1)
        reference_log_probs = F.log_softmax(ref_log_probs, dim=-1)
        return F.kl_div(reference_log_probs, policy_log_probs, log_target=True, reduction="none").sum(-1)

    log_ratio = log_probs - ref_log_probs
    if kind == "kl":
        return log_ratio
    if kind == "abs":
        return log_ratio.abs()
    if kind == "mse":
        return 0.5 * log_ratio.square()
    reverse_log_ratio = (-log_ratio).clamp(-LOG_RATIO_BOUND, LOG_RATIO_BOUND)
    k3 = torch.exp(reverse_log_ratio) - reverse_log_ratio - 1.0
    return k3.clamp(-LOW_VAR_KL_BOUND, LOW_VAR_KL_BOUND)


def compute_kl_loss(
    log_probs: torch.Tensor,
    ref_log_probs: torch.Tensor,
    response_mask: torch.Tensor,
    kind: str,
    loss_agg_mode: str,
    max_response_length: int | None = None,
    normalizer: float | None = None,
) -> torch.Tensor:
    """KL(policy || reference) as a loss term (GRPO's KL loss), aggregated like the policy loss.

    Args:
        log_probs: (bs, L), or (bs, L, V) for ``full``; carries the gradient.
        ref_log_probs: same shape.
        response_mask: (bs, L).
        kind: see ``kl_penalty``.
        loss_agg_mode: see ``agg_loss``.
        max_response_length: see ``agg_loss``.
        normalizer: see ``agg_loss``.

    Returns:
        Scalar loss (multiply by the KL coefficient in the caller).
    """
    if kind != "full":
        # A -inf/NaN log-prob at a padded position would reach the gradient as 0 * NaN through
        # the mse/abs derivatives. (Full-vocabulary inputs are logits, finite everywhere.)
        log_probs = _zero_outside(log_probs, response_mask)
        ref_log_probs = _zero_outside(ref_log_probs, response_mask)
    per_token = kl_penalty(log_probs, ref_log_probs, kind)
    return agg_loss(per_token, response_mask, loss_agg_mode, max_response_length, normalizer)


@torch.no_grad()
def apply_kl_penalty(
    token_level_scores: torch.Tensor,
    log_probs: torch.Tensor,
    ref_log_probs: torch.Tensor,
    response_mask: torch.Tensor,
    kl_coef: float,
    kind: str,
) -> tuple[torch.Tensor, float]:
    """KL in the reward (Ziegler et al. 2019, arXiv 1909.08593): ``r_t = score_t - kl_coef * kl_t``
    on every valid token.

    Args:
        token_level_scores: (bs, L) task rewards (outcome score on the last valid token).
        log_probs: (bs, L), or (bs, L, V) for ``full``.
        ref_log_probs: same shape.
        response_mask: (bs, L).
        kl_coef: penalty coefficient (the controller's ``kl_coef``).
        kind: see ``kl_penalty``.

    Returns:
        token_level_rewards: (bs, L), 0 outside the mask.
        mean_kl: mean over sequences of the per-sequence token-mean KL, the quantity to feed to
            the controller's ``update``.
    """
    _check_same_shape("token_level_scores", token_level_scores, "response_mask", response_mask)
    kl = kl_penalty(log_probs, ref_log_probs, kind)
    _check_same_shape("per-token KL", kl, "response_mask", response_mask)
    scores = token_level_scores.to(_float_dtype(token_level_scores))
    rewards = _zero_outside(scores - kl_coef * kl.to(scores.dtype), response_mask)
    sequence_kl = masked_mean(kl, response_mask, dim=-1)
    mean_kl = masked_mean(sequence_kl, response_mask.to(kl.dtype).sum(-1) > 0).item()
    return rewards, mean_kl


@dataclass
class FixedKLController:
    """A constant KL coefficient, with the same interface as ``AdaptiveKLController``."""

    kl_coef: float

    def update(self, current_kl: float, n_steps: int) -> None:
        """Keep ``kl_coef`` unchanged whatever the measured KL."""


@dataclass
class AdaptiveKLController:
    """Adaptive KL coefficient (Ziegler et al. 2019, "Fine-Tuning Language Models from Human
    Preferences", arXiv 1909.08593, section 2.2): a proportional controller steering the
    measured KL towards ``target_kl``.

    ``update`` sets ``kl_coef *= 1 + clip(current_kl / target_kl - 1, -0.2, 0.2) * n_steps / horizon``.

    Attributes:
        kl_coef: current coefficient (initial value at construction).
        target_kl: the KL to steer towards (> 0).
        horizon: steps over which the error is corrected (> 0); larger is slower.
    """

    kl_coef: float
    target_kl: float
    horizon: float

    def __post_init__(self) -> None:
        if self.kl_coef < 0:
            raise ValueError(f"AdaptiveKLController kl_coef must be >= 0, got {self.kl_coef}")
        if self.target_kl <= 0:
            raise ValueError(f"AdaptiveKLController target_kl must be > 0, got {self.target_kl}")
        if self.horizon <= 0:
            raise ValueError(f"AdaptiveKLController horizon must be > 0, got {self.horizon}")

    def update(self, current_kl: float, n_steps: int) -> None:
        """Move ``kl_coef`` towards keeping KL at the target.

        Args:
            current_kl: KL measured on the last batch (e.g. ``apply_kl_penalty``'s ``mean_kl``).
            n_steps: samples (or steps) since the last update; the paper uses the batch size.
        """
        proportional_error = min(max(current_kl / self.target_kl - 1.0, -0.2), 0.2)
        self.kl_coef *= 1.0 + proportional_error * n_steps / self.horizon


KLController = FixedKLController | AdaptiveKLController


# --------------------------------------------------------------------------------------------
# Log-probs and entropy from logits
# --------------------------------------------------------------------------------------------


def log_probs_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Log-probability of each label: ``logits[label] - logsumexp(logits)``.

    Gathers one logit per position and subtracts the logsumexp, so no (bs, L, V) softmax or
    log-softmax is materialised or kept for backward (autograd keeps the logits it already has
    and the (bs, L) logsumexp). Half-precision logits are upcast to float32 first, because the
    difference of two bf16 numbers of magnitude ~20 is only good to ~0.1 nats; that costs one
    float32 copy of the logits.

    Args:
        logits: (bs, L, V) (any leading shape works).
        labels: (bs, L) integer token ids, the leading shape of ``logits``.

    Returns:
        (bs, L) log-probs, float32 (float64 for float64 logits).
    """
    if labels.shape != logits.shape[:-1]:
        raise ValueError(
            f"labels shape {tuple(labels.shape)} must equal the logits shape without the vocab dim "
            f"{tuple(logits.shape[:-1])}"
        )
    logits = logits.to(_float_dtype(logits))
    label_logits = logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    return label_logits - torch.logsumexp(logits, dim=-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the categorical distribution given by ``logits`` at each position.

    ``H = logsumexp(z) - sum_v softmax(z)_v * z_v``, stable for any finite logits (no
    ``log(softmax)`` of underflowed probabilities). Computed in the logits' dtype; pass float32
    logits for float32 accuracy.

    Args:
        logits: (bs, L, V), finite.

    Returns:
        (bs, L) entropies in nats.
    """
    probs = F.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(-1)
