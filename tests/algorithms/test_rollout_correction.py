"""Rollout correction (TIS / MIS, token and sequence level) on hand-computed ratios."""

import math

import pytest
import torch

from verl.algorithms import core_algos as ca
from verl.algorithms.rollout_correction import rollout_importance_weights

# Row 0: token ratios pi_old / pi_rollout = [3, 0.5, 1.5]; row 1: [0.4, 1.0] and one padded
# position whose rollout log-prob is garbage (-inf) and must be ignored.
RATIOS = [[3.0, 0.5, 1.5], [0.4, 1.0, 1.0]]
MASK = torch.tensor([[1, 1, 1], [1, 1, 0]])


def _log_probs() -> tuple[torch.Tensor, torch.Tensor]:
    rollout = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -1.2, float("-inf")]])
    old = rollout + torch.tensor(RATIOS).log()
    old[1, 2] = -0.7
    return old, rollout


def test_tis_token_truncates_each_ratio_at_the_threshold():
    old, rollout = _log_probs()
    weights, metrics = rollout_importance_weights(old, rollout, MASK, "tis", "token", threshold=2.0)
    assert torch.allclose(weights, torch.tensor([[2.0, 0.5, 1.5], [0.4, 1.0, 0.0]]), atol=1e-6)
    assert metrics["rollout_corr/truncated_frac"] == pytest.approx(1 / 5)
    assert metrics["rollout_corr/ratio_mean"] == pytest.approx((3.0 + 0.5 + 1.5 + 0.4 + 1.0) / 5, rel=1e-6)
    assert metrics["rollout_corr/ratio_max"] == pytest.approx(3.0, rel=1e-6)


def test_mis_token_masks_ratios_outside_the_band():
    old, rollout = _log_probs()
    weights, metrics = rollout_importance_weights(old, rollout, MASK, "mis", "token", threshold=2.0)
    # band [0.5, 2]: 3 and 0.4 are out, 0.5 (on the edge) stays
    assert weights.tolist() == [[0.0, 1.0, 1.0], [0.0, 1.0, 0.0]]
    assert metrics["rollout_corr/masked_frac"] == pytest.approx(2 / 5)


def test_tis_and_mis_sequence_level_use_the_product_of_the_token_ratios():
    old, rollout = _log_probs()
    # row 0: 3 * 0.5 * 1.5 = 2.25; row 1: 0.4 * 1.0 = 0.4
    tis, tis_metrics = rollout_importance_weights(old, rollout, MASK, "tis", "sequence", threshold=2.0)
    assert torch.allclose(tis, torch.tensor([[2.0, 2.0, 2.0], [0.4, 0.4, 0.0]]), atol=1e-6)
    assert tis_metrics["rollout_corr/truncated_frac"] == pytest.approx(0.5)
    assert tis_metrics["rollout_corr/ratio_mean"] == pytest.approx((2.25 + 0.4) / 2, rel=1e-6)
    mis, mis_metrics = rollout_importance_weights(old, rollout, MASK, "mis", "sequence", threshold=3.0)
    # band [1/3, 3]: both sequences inside
    assert mis.tolist() == [[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]]
    assert mis_metrics["rollout_corr/masked_frac"] == 0.0
    mis, _ = rollout_importance_weights(old, rollout, MASK, "mis", "sequence", threshold=2.0)
    assert mis.tolist() == [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]  # 2.25 > 2 and 0.4 < 0.5


def test_tis_weights_scale_each_tokens_policy_gradient():
    """The weights enter the loss detached: each token's gradient is multiplied by its weight."""
    old, rollout = _log_probs()
    weights, _ = rollout_importance_weights(old, rollout, MASK, "tis", "token", threshold=2.0)
    log_probs = old.clone().requires_grad_(True)
    advantages = torch.ones(2, 3)
    loss, _ = ca.compute_policy_loss(old, log_probs, advantages, MASK, 0.2, 0.3, 3.0, "token-mean",
                                     token_weights=weights)
    loss.backward()
    # on-policy ratio 1: d(-A * ratio)/d log_prob = -A, averaged over 5 tokens, times the weight
    expected = -torch.tensor([[2.0, 0.5, 1.5], [0.4, 1.0, 0.0]]) / 5
    assert torch.allclose(log_probs.grad, expected, atol=1e-6)


def test_mis_rejects_a_bad_threshold_and_mode():
    old, rollout = _log_probs()
    with pytest.raises(ValueError, match="threshold must be > 1"):
        rollout_importance_weights(old, rollout, MASK, "mis", "token", threshold=1.0)
    with pytest.raises(ValueError, match="'tis' or 'mis'"):
        rollout_importance_weights(old, rollout, MASK, "off", "token", threshold=2.0)


def test_tis_is_exactly_one_without_mismatch():
    old, _ = _log_probs()
    weights, metrics = rollout_importance_weights(old, old.clone(), MASK, "tis", "token", threshold=2.0)
    assert weights.tolist() == [[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]]
    assert metrics["rollout_corr/truncated_frac"] == 0.0 and math.isclose(metrics["rollout_corr/ratio_max"], 1.0)
