"""DAPO's data-side pieces (Yu et al. 2025, "DAPO: An Open-Source LLM Reinforcement Learning
System at Scale", arXiv 2503.14476): overlong reward shaping and dynamic sampling's group
selection. Pure numpy/torch; the controller (``verl.trainer.ray_trainer``) drives them.
DAPO's other two pieces are in ``core_algos``: the token-level loss (``agg_loss`` with
``token-mean``) and clip-higher (``compute_policy_loss`` with ``clip_ratio_high > clip_ratio_low``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


def overlong_penalty(
    response_lengths: torch.Tensor, max_response_length: int, buffer_length: int, penalty_factor: float
) -> torch.Tensor:
    """DAPO's soft overlong punishment (eq. 13), a length-aware reward added to the task score.

    With ``L_max = max_response_length`` and ``L_cache = buffer_length``, for a response of
    ``|y|`` tokens: 0 when ``|y| <= L_max - L_cache``; ``(L_max - L_cache - |y|) / L_cache`` inside
    the buffer (linear from 0 down to -1 at ``|y| = L_max``); -1 beyond ``L_max`` (a response cut at
    the limit has ``|y| = L_max`` here). The result is multiplied by ``penalty_factor``.

    Args:
        response_lengths: (bs,) valid tokens per response.
        max_response_length: L_max > 0.
        buffer_length: L_cache in (0, L_max].
        penalty_factor: scale >= 0 (1 in the paper).

    Returns:
        (bs,) float32 penalties in ``[-penalty_factor, 0]``.
    """
    if max_response_length <= 0:
        raise ValueError(f"max_response_length must be > 0, got {max_response_length}")
    if not 0 < buffer_length <= max_response_length:
        raise ValueError(f"overlong buffer_length must be in (0, {max_response_length}], got {buffer_length}")
    if penalty_factor < 0:
        raise ValueError(f"overlong penalty_factor must be >= 0, got {penalty_factor}")
    lengths = response_lengths.to(torch.float32)
    expected = max_response_length - buffer_length
    penalty = ((expected - lengths) / buffer_length).clamp(min=-1.0, max=0.0)
    return penalty * penalty_factor


def prompt_has_spread(scores: torch.Tensor, samples_per_prompt: int) -> np.ndarray:
    """Dynamic sampling's filter: which prompts' groups hold at least two distinct scores.

    Args:
        scores: (prompts * n,) scores, the n samples of a prompt adjacent (rollout row order).
        samples_per_prompt: n >= 1.

    Returns:
        (prompts,) bool. A group whose samples all score the same gets a zero advantage from
        every group estimator: it adds no signal, only batch size.
    """
    if samples_per_prompt < 1 or scores.dim() != 1 or scores.shape[0] % samples_per_prompt != 0:
        raise ValueError(
            f"prompt_has_spread needs 1-D scores whose length is a multiple of n={samples_per_prompt}, "
            f"got shape {tuple(scores.shape)}"
        )
    groups = scores.detach().to(torch.float64).reshape(-1, samples_per_prompt)
    return (groups.amax(dim=1) > groups.amin(dim=1)).cpu().numpy()


@dataclass(frozen=True)
class GroupSelection:
    """The prompts kept for the update, across the generation batches drawn in one step.

    Attributes:
        prompts: per generation batch (in draw order), the indices of its kept prompts (sorted).
        is_filler: per generation batch, (len(prompts[b]),) bool: which kept prompts are filler.
        informative: kept prompts whose group has spread.
        filler: kept prompts without spread, taken only when the tries ran out before
            ``target`` informative prompts were found (they keep the batch size fixed; the
            trainer sets their advantage to 0).
    """

    prompts: list[np.ndarray]
    is_filler: list[np.ndarray]
    informative: int
    filler: int


def enough_informative(spread_per_batch: list[np.ndarray], target: int) -> bool:
    """Whether the batches drawn so far hold ``target`` prompts with spread (stop drawing)."""
    return sum(int(spread.sum()) for spread in spread_per_batch) >= target


def select_groups(spread_per_batch: list[np.ndarray], target: int) -> GroupSelection:
    """DAPO dynamic sampling (Yu et al. 2025, arXiv 2503.14476, Algorithm 1): keep the first
    ``target`` prompts with spread in draw order; if fewer were drawn, fill the rest with the
    first prompts without spread (draw order), so the update batch keeps its size.

    Args:
        spread_per_batch: per generation batch, (prompts_in_batch,) bool from ``prompt_has_spread``.
        target: prompts the update needs (``data.rollout_batch_size``).

    Raises:
        ValueError: fewer than ``target`` prompts were drawn in all.
    """
    drawn = sum(len(spread) for spread in spread_per_batch)
    if drawn < target:
        raise ValueError(f"dynamic sampling drew {drawn} prompts, fewer than the {target} the update needs")
    kept = [np.zeros(len(spread), dtype=bool) for spread in spread_per_batch]
    informative = 0
    for batch, spread in enumerate(spread_per_batch):
        for prompt in np.flatnonzero(spread):
            if informative == target:
                break
            kept[batch][prompt] = True
            informative += 1
    filler = 0
    for batch, spread in enumerate(spread_per_batch):
        for prompt in np.flatnonzero(~spread):
            if informative + filler == target:
                break
            kept[batch][prompt] = True
            filler += 1
    prompts = [np.flatnonzero(mask) for mask in kept]
    is_filler = [~spread[indices] for spread, indices in zip(spread_per_batch, prompts)]
    return GroupSelection(prompts, is_filler, informative, filler)
