"""GSPO, GSPO-token, CISPO and the ReMax advantage on hand-computed values."""

import math

import pytest
import torch

from verl.algorithms import core_algos as ca

MASK = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0]])
# Per-token log-ratios log pi - log pi_old; padding holds garbage that must not leak.
LOG_RATIOS = torch.tensor([[0.2, -0.1, 0.5], [0.6, 0.6, 9.0], [0.6, -7.0, 3.0]])
ADVANTAGES = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0], [-1.0, 0.0, 0.0]])


def _inputs():
    old = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -1.2, -3.0], [-2.0, -1.0, -1.0]])
    log_probs = (old + LOG_RATIOS).requires_grad_(True)
    return old, log_probs


def test_gspo_sequence_ratio_and_clip_by_hand():
    old, log_probs = _inputs()
    loss, metrics = ca.compute_gspo_policy_loss(old, log_probs, ADVANTAGES, MASK, 0.2, 0.3, "seq-mean-token-mean")
    # s_0 = exp(mean(0.2, -0.1, 0.5)) = e^0.2 (inside [0.8, 1.3]); s_1 = e^0.6 > 1.3 with A > 0:
    # clipped to 1.3; s_2 = e^0.6 with A < 0: max(e^0.6, 1.3) = e^0.6 (the unclipped term).
    s0, s2 = math.exp(0.2), math.exp(0.6)
    assert loss.item() == pytest.approx((-s0 - 1.3 + s2) / 3, rel=1e-6)
    assert metrics["pg_clipfrac"] == pytest.approx(1 / 3)
    loss.backward()
    # d loss_i / d log pi_it = -A_i s_i / |y_i| for an unclipped sequence, 0 for the clipped one
    expected = torch.tensor([[-s0 / 3] * 3, [0.0, 0.0, 0.0], [s2, 0.0, 0.0]]) / 3
    assert torch.allclose(log_probs.grad, expected, atol=1e-6)


def test_gspo_token_equals_gspo_for_sequence_constant_advantages():
    old, log_probs = _inputs()
    sequence_loss, _ = ca.compute_gspo_policy_loss(old, log_probs, ADVANTAGES, MASK, 0.2, 0.3, "seq-mean-token-mean")
    sequence_loss.backward()
    sequence_grad = log_probs.grad.clone()
    old, log_probs = _inputs()
    token_loss, metrics = ca.compute_gspo_policy_loss(
        old, log_probs, ADVANTAGES, MASK, 0.2, 0.3, "seq-mean-token-mean", token_level=True
    )
    token_loss.backward()
    assert token_loss.item() == pytest.approx(sequence_loss.item(), rel=1e-6)
    assert torch.allclose(log_probs.grad, sequence_grad, atol=1e-6)
    assert metrics["pg_clipfrac"] == pytest.approx(2 / 6)  # both tokens of sequence 1


def test_gspo_token_uses_each_tokens_own_advantage():
    old, log_probs = _inputs()
    advantages = torch.tensor([[1.0, -1.0, 2.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    loss, _ = ca.compute_gspo_policy_loss(old, log_probs, advantages, MASK, 0.2, 0.3, "token-mean", token_level=True)
    loss.backward()
    s0 = math.exp(0.2)  # every token of row 0 has the value s_0, inside the clip range
    expected_row0 = torch.tensor([-1.0, 1.0, -2.0]) * s0 / 6  # token-mean over 6 valid tokens
    assert torch.allclose(log_probs.grad[0], expected_row0, atol=1e-6)
    assert loss.item() == pytest.approx(-(1.0 - 1.0 + 2.0) * s0 / 6, rel=1e-6)


def test_cispo_clips_the_weight_and_keeps_every_tokens_gradient():
    old = torch.tensor([[-1.0, -2.0, -0.5]])
    ratios = torch.tensor([[1.5, 0.5, 1.0]])
    log_probs = (old + ratios.log()).requires_grad_(True)
    advantages = torch.tensor([[1.0, 1.0, -2.0]])
    mask = torch.ones(1, 3)
    loss, metrics = ca.compute_cispo_policy_loss(old, log_probs, advantages, mask, 0.2, 0.3, "token-mean")
    loss.backward()
    weights = torch.tensor([[1.3, 0.8, 1.0]])  # clip(ratio, 0.8, 1.3), no gradient through it
    assert torch.allclose(log_probs.grad, -weights * advantages / 3, atol=1e-6)
    assert loss.item() == pytest.approx((-(weights * advantages * log_probs.detach()).sum() / 3).item(), rel=1e-6)
    assert metrics["pg_clipfrac"] == pytest.approx(2 / 3)
    # PPO silences token 0 (ratio 1.5 > 1.3 with A > 0); CISPO does not.
    ppo_log_probs = (old + ratios.log()).requires_grad_(True)
    ppo_loss, _ = ca.compute_policy_loss(old, ppo_log_probs, advantages, mask, 0.2, 0.3, 3.0, "token-mean")
    ppo_loss.backward()
    assert ppo_log_probs.grad[0, 0] == 0.0 and log_probs.grad[0, 0] != 0.0


def test_cispo_and_gspo_are_selected_by_name():
    old, log_probs = _inputs()
    for name, expected_fn in (
        ("cispo", lambda: ca.compute_cispo_policy_loss(old, log_probs, ADVANTAGES, MASK, 0.2, 0.3, "token-mean")),
        ("gspo", lambda: ca.compute_gspo_policy_loss(old, log_probs, ADVANTAGES, MASK, 0.2, 0.3, "token-mean")),
        ("ppo", lambda: ca.compute_policy_loss(old, log_probs, ADVANTAGES, MASK, 0.2, 0.3, 3.0, "token-mean")),
    ):
        loss, _ = ca.compute_policy_loss_by_name(name, old, log_probs, ADVANTAGES, MASK, 0.2, 0.3, 3.0, "token-mean")
        assert loss.item() == pytest.approx(expected_fn()[0].item())
    with pytest.raises(ValueError, match="unknown policy loss 'sapo'"):
        ca.compute_policy_loss_by_name("sapo", old, log_probs, ADVANTAGES, MASK, 0.2, 0.3, 3.0, "token-mean")


def test_remax_advantage_is_score_minus_greedy_baseline():
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1]])
    rewards = torch.zeros(3, 3)
    rewards[0, 1], rewards[1, 0], rewards[2, 2] = 1.0, 0.0, 1.0
    advantages, returns = ca.compute_remax_outcome_advantage(rewards, mask, torch.tensor([0.5, 0.5, 1.0]))
    assert advantages.tolist() == [[0.5, 0.5, 0.0], [-0.5, 0.0, 0.0], [0.0, 0.0, 0.0]]
    assert returns.tolist() == [[1.0, 1.0, 0.0], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]
    with pytest.raises(ValueError, match="baseline_scores must have shape"):
        ca.compute_remax_outcome_advantage(rewards, mask, torch.zeros(2))


def test_gae_by_hand_and_returns_are_advantage_plus_value():
    # one row of 3 valid tokens + padding; outcome reward 1 on the last token
    rewards = torch.tensor([[0.0, 0.0, 1.0, 0.0]])
    values = torch.tensor([[0.5, 0.2, 0.4, 9.0]])  # the padded value must not leak
    mask = torch.tensor([[1, 1, 1, 0]])
    gamma, lam = 0.9, 0.5
    advantages, returns = ca.compute_gae_advantage_return(rewards, values, mask, gamma, lam, whiten=False)
    # deltas: d2 = 1 - 0.4 = 0.6; d1 = 0 + 0.9*0.4 - 0.2 = 0.16; d0 = 0 + 0.9*0.2 - 0.5 = -0.32
    a2 = 0.6
    a1 = 0.16 + 0.45 * a2
    a0 = -0.32 + 0.45 * a1
    assert torch.allclose(advantages, torch.tensor([[a0, a1, a2, 0.0]]), atol=1e-6)
    assert torch.allclose(returns, torch.tensor([[a0 + 0.5, a1 + 0.2, a2 + 0.4, 0.0]]), atol=1e-6)
    # lam = 1, gamma = 1: Monte-Carlo return minus the value
    advantages, returns = ca.compute_gae_advantage_return(rewards, values, mask, 1.0, 1.0, whiten=False)
    assert torch.allclose(advantages, torch.tensor([[0.5, 0.8, 0.6, 0.0]]), atol=1e-6)
    assert torch.allclose(returns, torch.tensor([[1.0, 1.0, 1.0, 0.0]]), atol=1e-6)


def test_gae_whitened_advantages_have_zero_mean_unit_variance():
    rewards = torch.tensor([[0.0, 1.0], [0.0, -1.0]])
    values = torch.tensor([[0.1, 0.3], [0.2, 0.0]])
    mask = torch.ones(2, 2)
    advantages, _ = ca.compute_gae_advantage_return(rewards, values, mask, 1.0, 0.95)
    assert advantages.mean().item() == pytest.approx(0.0, abs=1e-6)
    assert advantages.var().item() == pytest.approx(1.0, rel=1e-4)


def test_gae_value_loss_is_clipped_around_the_old_values():
    old_values = torch.tensor([[0.0, 0.0, 0.0]])
    values = torch.tensor([[0.5, -0.1, 2.0]], requires_grad=True)
    returns = torch.tensor([[1.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 0]])
    loss, metrics = ca.compute_value_loss(values, old_values, returns, mask, 0.2, "token-mean")
    # token 0: unclipped (0.5-1)^2 = 0.25, clipped (0.2-1)^2 = 0.64 -> 0.64 (no gradient)
    # token 1: unclipped 0.01, clipped (-0.1)^2 = 0.01 -> 0.01; token 2 is padding
    assert loss.item() == pytest.approx(0.5 * (0.64 + 0.01) / 2)
    assert metrics["vf_clipfrac"] == pytest.approx(0.5)
    loss.backward()
    assert torch.allclose(values.grad, torch.tensor([[0.0, -0.1 / 2, 0.0]]), atol=1e-6)
