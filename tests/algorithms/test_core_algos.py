"""Hand-computed checks of verl.trainer.core_algos (pure tensor math, milliseconds)."""

import math

import pytest
import torch

from verl.algorithms import core_algos as ca

# One batch used by the outcome-estimator tests. Group ids are non-contiguous and interleaved:
#   group 7:  rewards [1, 0, 1, 1] -> mean 0.75, unbiased std sqrt(0.75 / 3) = 0.5
#   group 3:  a singleton (reward 5)
#   group 11: all-equal [0.5, 0.5]
GROUP_IDS = [7, 3, 7, 11, 7, 11, 7]
SCORES = [1.0, 5.0, 0.0, 0.5, 1.0, 0.5, 1.0]
LENGTHS = [3, 1, 2, 4, 2, 3, 4]
MAX_LEN = 4


def _assert_close(actual: torch.Tensor, expected: torch.Tensor, atol: float = 1e-6, rtol: float = 1e-5) -> None:
    # Not torch.testing.assert_close: its first call imports torch.distributed.tensor (~2.5 s).
    assert actual.shape == expected.shape, f"shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert torch.allclose(actual, expected.to(actual.dtype), rtol=rtol, atol=atol), f"\n{actual}\n!=\n{expected}"


def _response_mask(lengths: list[int], max_len: int) -> torch.Tensor:
    return torch.arange(max_len).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)


def _outcome_rewards(scores: list[float], lengths: list[int], max_len: int) -> torch.Tensor:
    """Each score on the last valid token of its row."""
    rewards = torch.zeros(len(scores), max_len)
    rewards[torch.arange(len(scores)), torch.tensor(lengths) - 1] = torch.tensor(scores)
    return rewards


def _batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    mask = _response_mask(LENGTHS, MAX_LEN)
    return _outcome_rewards(SCORES, LENGTHS, MAX_LEN), mask, torch.tensor(GROUP_IDS)


def _per_token(per_sample: list[float], mask: torch.Tensor) -> torch.Tensor:
    return torch.tensor(per_sample).unsqueeze(1) * mask


# ------------------------------------------------------------------------------------- masked


def test_masked_mean_ignores_nan_and_inf_at_masked_positions():
    values = torch.tensor([[1.0, 3.0, float("nan")], [5.0, float("-inf"), 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert ca.masked_mean(values, mask).item() == pytest.approx(3.0)
    assert ca.masked_mean(values, mask, dim=-1).tolist() == pytest.approx([2.0, 5.0])
    assert ca.masked_sum(values, mask).item() == pytest.approx(9.0)


def test_masked_mean_of_empty_selection_is_zero():
    assert ca.masked_mean(torch.ones(2, 3), torch.zeros(2, 3)).item() == 0.0


def test_masked_var_matches_torch_var_on_selected_values():
    values = torch.tensor([[1.0, 2.0, 9.0], [4.0, 100.0, 100.0]])
    mask = torch.tensor([[True, True, False], [True, False, False]])
    selected = torch.tensor([1.0, 2.0, 4.0])
    assert ca.masked_var(values, mask).item() == pytest.approx(selected.var().item())
    assert ca.masked_var(values, mask, unbiased=False).item() == pytest.approx(selected.var(unbiased=False).item())


def test_masked_var_rejects_too_few_values():
    with pytest.raises(ValueError, match="at least 2"):
        ca.masked_var(torch.ones(1, 3), torch.tensor([[1, 0, 0]]))


def test_masked_whiten_gives_zero_mean_unit_variance_and_zero_padding():
    values = torch.tensor([[1.0, 2.0, 7.0], [4.0, 50.0, 50.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]])
    whitened = ca.masked_whiten(values, mask)
    assert ca.masked_mean(whitened, mask).item() == pytest.approx(0.0, abs=1e-6)
    assert ca.masked_var(whitened, mask).item() == pytest.approx(1.0, abs=1e-5)
    assert whitened[:, 2].tolist() == [0.0, 0.0]
    kept_mean = ca.masked_whiten(values, mask, shift_mean=False)
    assert ca.masked_mean(kept_mean, mask).item() == pytest.approx(ca.masked_mean(values, mask).item(), abs=1e-5)


# ------------------------------------------------------------------------------------- groups


def test_group_statistics_with_unsorted_noncontiguous_ids():
    stats = ca.group_statistics(torch.tensor(SCORES), torch.tensor(GROUP_IDS))
    assert stats.size.tolist() == [4, 1, 4, 2, 4, 2, 4]
    assert stats.mean.tolist() == pytest.approx([0.75, 5.0, 0.75, 0.5, 0.75, 0.5, 0.75])
    assert stats.std.tolist() == pytest.approx([0.5, 0.0, 0.5, 0.0, 0.5, 0.0, 0.5])
    assert stats.has_spread.tolist() == [True, False, True, False, True, False, True]


@pytest.mark.parametrize(
    "bad_index",
    [torch.tensor([0.0, 0.0, 1.0]), torch.tensor([[0, 0, 1]]), torch.tensor([0, 1]), torch.tensor([True, False, True])],
)
def test_group_index_must_be_1d_integer_of_batch_length(bad_index):
    with pytest.raises(ValueError, match="group_index must be a 1-D integer tensor"):
        ca.group_statistics(torch.zeros(3), bad_index)


# ---------------------------------------------------------------------------------- estimators


def test_grpo_hand_computed():
    rewards, mask, groups = _batch()
    advantages, returns = ca.compute_grpo_outcome_advantage(rewards, mask, groups, norm_adv_by_std=True, eps=0.0)
    # group 7: (1 - 0.75) / 0.5 = 0.5, (0 - 0.75) / 0.5 = -1.5; singleton and all-equal -> 0
    expected = _per_token([0.5, 0.0, -1.5, 0.0, 0.5, 0.0, 0.5], mask)
    _assert_close(advantages, expected)
    _assert_close(returns, expected)


def test_grpo_eps_is_added_to_std():
    rewards, mask, groups = _batch()
    advantages, _ = ca.compute_grpo_outcome_advantage(rewards, mask, groups, norm_adv_by_std=True, eps=0.5)
    # (1 - 0.75) / (0.5 + 0.5) = 0.25
    assert advantages[0, 0].item() == pytest.approx(0.25)


def test_dr_grpo_is_mean_centred_only():
    rewards, mask, groups = _batch()
    advantages, _ = ca.compute_grpo_outcome_advantage(rewards, mask, groups, norm_adv_by_std=False)
    _assert_close(advantages, _per_token([0.25, 0.0, -0.75, 0.0, 0.25, 0.0, 0.25], mask))


def test_grpo_all_equal_non_representable_scores_give_exact_zero():
    # 0.1 * 3 / 3 != 0.1 in floating point; the spread check must still give exactly 0.
    mask = torch.ones(3, 2, dtype=torch.bool)
    rewards = _outcome_rewards([0.1, 0.1, 0.1], [2, 2, 2], 2)
    advantages, _ = ca.compute_grpo_outcome_advantage(rewards, mask, torch.tensor([4, 4, 4]))
    assert torch.count_nonzero(advantages) == 0


def test_grpo_score_is_sum_over_valid_tokens():
    # A per-token penalty (e.g. KL in the reward) counts towards the score.
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    rewards = torch.tensor([[-0.5, 1.0, 0.0], [0.0, 0.0, 0.0]])
    advantages, _ = ca.compute_grpo_outcome_advantage(rewards, mask, torch.tensor([0, 0]), norm_adv_by_std=False)
    _assert_close(advantages, torch.tensor([[0.25, 0.25, 0.0], [-0.25, -0.25, -0.25]]))


def test_rloo_hand_computed():
    rewards, mask, groups = _batch()
    advantages, returns = ca.compute_rloo_outcome_advantage(rewards, mask, groups)
    # group 7: 1 - mean(0, 1, 1) = 1/3; 0 - mean(1, 1, 1) = -1
    expected = _per_token([1 / 3, 0.0, -1.0, 0.0, 1 / 3, 0.0, 1 / 3], mask)
    _assert_close(advantages, expected)
    _assert_close(returns, expected)


def test_reinforce_plus_plus_discounted_and_whitened():
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 0.0]])
    advantages, returns = ca.compute_reinforce_plus_plus_outcome_advantage(rewards, mask, gamma=0.5)
    _assert_close(returns, torch.tensor([[0.25, 0.5, 1.0], [1.0, 2.0, 0.0]]))
    # valid returns [0.25, 0.5, 1, 1, 2]: mean 0.95, unbiased var 1.8 / 4 = 0.45
    expected = torch.tensor([[-0.7, -0.45, 0.05], [0.05, 1.05, 0.0]]) / math.sqrt(0.45)
    _assert_close(advantages, expected, atol=1e-5, rtol=1e-5)


def test_reinforce_plus_plus_gamma_one_is_reward_to_go():
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 0.0]])
    _, returns = ca.compute_reinforce_plus_plus_outcome_advantage(rewards, mask, gamma=1.0)
    _assert_close(returns, torch.tensor([[1.0, 1.0, 1.0], [2.0, 2.0, 0.0]]))


def test_reinforce_plus_plus_rejects_bad_gamma():
    with pytest.raises(ValueError, match="gamma"):
        ca.compute_reinforce_plus_plus_outcome_advantage(torch.zeros(2, 2), torch.ones(2, 2), gamma=1.5)


def test_reinforce_plus_plus_baseline_hand_computed():
    # group 0: scores [1, 0] (2 and 1 tokens); group 5: singleton; group 2: all-equal [1, 1]
    lengths = [2, 1, 2, 3, 1]
    mask = _response_mask(lengths, 3)
    rewards = _outcome_rewards([1.0, 0.0, 1.0, 1.0, 1.0], lengths, 3)
    advantages, returns = ca.compute_reinforce_plus_plus_baseline_outcome_advantage(
        rewards, mask, torch.tensor([0, 0, 5, 2, 2])
    )
    # centred tokens of group 0: [0.5, 0.5, -0.5]; mean 1/6, unbiased var (2/3) / 2 = 1/3
    up, down = (1 / 3) * math.sqrt(3), -(2 / 3) * math.sqrt(3)
    expected = torch.tensor([[up, up, 0.0], [down, 0.0, 0.0], [0.0] * 3, [0.0] * 3, [0.0] * 3])
    _assert_close(advantages, expected, atol=1e-5, rtol=1e-5)
    _assert_close(returns, expected, atol=1e-5, rtol=1e-5)


def test_reinforce_plus_plus_baseline_without_any_spread_is_zero():
    mask = torch.ones(3, 2)
    rewards = _outcome_rewards([1.0, 1.0, 3.0], [2, 2, 2], 2)
    advantages, _ = ca.compute_reinforce_plus_plus_baseline_outcome_advantage(rewards, mask, torch.tensor([1, 1, 2]))
    assert torch.count_nonzero(advantages) == 0


def test_multi_reward_single_component_equals_grpo():
    rewards, mask, groups = _batch()
    for norm in (True, False):
        multi = ca.compute_multi_reward_advantages(
            {"accuracy": torch.tensor(SCORES)}, {"accuracy": 1.0}, groups, mask, norm_adv_by_std=norm
        )
        grpo, _ = ca.compute_grpo_outcome_advantage(rewards, mask, groups, norm_adv_by_std=norm)
        _assert_close(multi, grpo)


def test_multi_reward_normalises_components_separately():
    mask = torch.ones(4, 2)
    answer = torch.tensor([1.0, 0.0, 1.0, 1.0])  # GRPO: [0.5, -1.5, 0.5, 0.5]
    visual = torch.tensor([0.0, 0.0, 1.0, 1.0])  # mean 0.5, std sqrt(1/3): +-sqrt(3)/2
    advantages = ca.compute_multi_reward_advantages(
        {"answer": answer, "visual": visual},
        {"answer": 0.5, "visual": 0.5},
        torch.zeros(4, dtype=torch.long),
        mask,
        norm_adv_by_std=True,
        eps=0.0,
    )
    half_root3 = math.sqrt(3) / 2
    expected = [0.5 * (0.5 - half_root3), 0.5 * (-1.5 - half_root3), 0.5 * (0.5 + half_root3), 0.5 * (0.5 + half_root3)]
    _assert_close(advantages, _per_token(expected, mask))


def test_multi_reward_rejects_mismatched_names_and_shapes():
    mask, groups = torch.ones(2, 2), torch.tensor([0, 0])
    with pytest.raises(ValueError, match="must name the same components"):
        ca.compute_multi_reward_advantages({"a": torch.zeros(2)}, {"b": 1.0}, groups, mask)
    with pytest.raises(ValueError, match=r"component_scores\['a'\] must have shape \(2,\)"):
        ca.compute_multi_reward_advantages({"a": torch.zeros(3)}, {"a": 1.0}, groups, mask)
    with pytest.raises(ValueError, match="empty"):
        ca.compute_multi_reward_advantages({}, {}, groups, mask)


def test_estimators_reject_rewards_outside_the_mask_and_nan():
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    misplaced = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    with pytest.raises(ValueError, match=r"outside response_mask in rows \[0\]"):
        ca.compute_grpo_outcome_advantage(misplaced, mask, torch.tensor([0, 0]))
    with pytest.raises(ValueError, match=r"NaN/inf \(or sums that overflow\) in rows \[1\]"):
        ca.compute_rloo_outcome_advantage(torch.tensor([[0.0, 0, 0], [0, float("nan"), 0]]), mask, torch.tensor([0, 0]))


def test_dispatcher_runs_each_registered_estimator():
    rewards, mask, groups = _batch()
    assert set(ca.ADVANTAGE_ESTIMATORS) == {"grpo", "rloo", "reinforce_plus_plus", "reinforce_plus_plus_baseline"}
    direct = {
        "grpo": ca.compute_grpo_outcome_advantage(rewards, mask, groups, False, 1e-6),
        "rloo": ca.compute_rloo_outcome_advantage(rewards, mask, groups),
        "reinforce_plus_plus": ca.compute_reinforce_plus_plus_outcome_advantage(rewards, mask, 0.9),
        "reinforce_plus_plus_baseline": ca.compute_reinforce_plus_plus_baseline_outcome_advantage(
            rewards, mask, groups
        ),
    }
    for name, (expected_advantages, expected_returns) in direct.items():
        advantages, returns = ca.compute_advantages(name, rewards, mask, groups, gamma=0.9, norm_adv_by_std=False)
        _assert_close(advantages, expected_advantages)
        _assert_close(returns, expected_returns)


def test_dispatcher_unknown_name_lists_valid_names():
    rewards, mask, groups = _batch()
    with pytest.raises(ValueError, match="unknown advantage estimator 'gae'; valid names: grpo, rloo"):
        ca.compute_advantages("gae", rewards, mask, groups)


# ------------------------------------------------------------------------------- aggregation

LOSS_MAT = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])
LOSS_MASK = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0]])  # last row: all padding


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("token-mean", (1 + 2 + 4) / 3),
        ("seq-mean-token-sum", (3 + 4) / 2),
        ("seq-mean-token-mean", (1.5 + 4) / 2),
        ("seq-mean-token-sum-norm", (3 / 4 + 4 / 4) / 2),
    ],
)
def test_agg_loss_modes(mode, expected):
    assert ca.agg_loss(LOSS_MAT, LOSS_MASK, mode, max_response_length=4).item() == pytest.approx(expected)


@pytest.mark.parametrize("mode", ca.LOSS_AGG_MODES)
def test_agg_loss_with_global_normalizer_sums_over_splits(mode):
    """Split rows into parts, each divided by the whole batch's count: the parts add up to the
    loss of the whole batch (what gradient accumulation across micro-batches and ranks needs)."""
    count = LOSS_MASK.sum().item() if mode == "token-mean" else (LOSS_MASK.sum(-1) > 0).sum().item()
    whole = ca.agg_loss(LOSS_MAT, LOSS_MASK, mode, max_response_length=4)
    parts = [ca.agg_loss(LOSS_MAT[rows], LOSS_MASK[rows], mode, 4, normalizer=count) for rows in ([0], [1, 2])]
    assert sum(parts).item() == pytest.approx(whole.item())
    with pytest.raises(ValueError, match="normalizer must be > 0"):
        ca.agg_loss(LOSS_MAT, LOSS_MASK, mode, 4, normalizer=0)


def test_agg_loss_errors():
    with pytest.raises(ValueError, match="valid modes: token-mean, seq-mean-token-sum"):
        ca.agg_loss(LOSS_MAT, LOSS_MASK, "token-sum")
    with pytest.raises(ValueError, match="needs a positive max_response_length"):
        ca.agg_loss(LOSS_MAT, LOSS_MASK, "seq-mean-token-sum-norm")


# ------------------------------------------------------------------------------- policy loss


def _policy_loss(ratios, advantages, low=0.2, high=0.28, dual=3.0, mode="token-mean"):
    log_probs = torch.log(torch.tensor([ratios])).requires_grad_(True)
    loss, metrics = ca.compute_policy_loss(
        old_log_probs=torch.zeros_like(log_probs),
        log_probs=log_probs,
        advantages=torch.tensor([advantages]),
        response_mask=torch.ones_like(log_probs),
        clip_ratio_low=low,
        clip_ratio_high=high,
        clip_ratio_dual=dual,
        loss_agg_mode=mode,
    )
    return loss, metrics, log_probs


def test_clipping_positive_advantage():
    loss, metrics, _ = _policy_loss([0.5, 0.9, 1.1, 1.5], [1.0] * 4)
    # A > 0: -min(r, clip(r, 0.8, 1.28)); only r = 1.5 is clipped (to 1.28)
    assert loss.item() == pytest.approx(-(0.5 + 0.9 + 1.1 + 1.28) / 4)
    assert metrics["pg_clipfrac"] == pytest.approx(0.25)
    assert metrics["pg_clipfrac_lower"] == 0.0
    assert metrics["ppo_kl"] == pytest.approx(-sum(math.log(r) for r in (0.5, 0.9, 1.1, 1.5)) / 4, rel=1e-5)


def test_clipping_negative_advantage():
    loss, metrics, _ = _policy_loss([0.5, 0.9, 1.1, 1.5], [-1.0] * 4)
    # A < 0: max(r, clip(r, 0.8, 1.28)); only r = 0.5 is clipped (to 0.8)
    assert loss.item() == pytest.approx((0.8 + 0.9 + 1.1 + 1.5) / 4)
    assert metrics["pg_clipfrac"] == pytest.approx(0.25)


def test_clip_higher_is_asymmetric():
    _, symmetric, _ = _policy_loss([1.25], [1.0], low=0.2, high=0.2)
    _, clip_higher, _ = _policy_loss([1.25], [1.0], low=0.2, high=0.28)
    assert symmetric["pg_clipfrac"] == 1.0
    assert clip_higher["pg_clipfrac"] == 0.0
    _, lower_side, _ = _policy_loss([0.75], [-1.0], low=0.2, high=0.28)
    assert lower_side["pg_clipfrac"] == 1.0


def test_dual_clip_bounds_negative_advantage_loss():
    loss, metrics, log_probs = _policy_loss([5.0, 1.0], [-2.0, -2.0], dual=3.0, mode="seq-mean-token-sum")
    # token 0: max(2 * 5, 2 * 1.28) = 10 capped at -A * c = 6; token 1: 2 * 1 = 2
    assert loss.item() == pytest.approx(6.0 + 2.0)
    assert metrics["pg_clipfrac_lower"] == pytest.approx(0.5)
    loss.backward()
    assert log_probs.grad[0, 0].item() == 0.0
    assert log_probs.grad[0, 1].item() != 0.0


def test_dual_clip_does_not_touch_positive_advantage_and_can_be_disabled():
    loss, metrics, _ = _policy_loss([5.0], [2.0], dual=3.0)
    assert loss.item() == pytest.approx(-2.0 * 1.28)
    assert metrics["pg_clipfrac_lower"] == 0.0
    loss, metrics, _ = _policy_loss([5.0, 1.0], [-2.0, 0.0], dual=math.inf, mode="seq-mean-token-sum")
    assert loss.item() == pytest.approx(10.0)
    assert metrics["pg_clipfrac_lower"] == 0.0


def test_policy_loss_rejects_bad_clip_settings():
    with pytest.raises(ValueError, match="clip_ratio_dual must be > 1"):
        _policy_loss([1.0], [1.0], dual=1.0)
    with pytest.raises(ValueError, match=r"clip_ratio_low must be in \[0, 1\]"):
        _policy_loss([1.0], [1.0], low=1.5)
    _policy_loss([1.0], [1.0], low=1.0)  # 1: no lower bound (floor 0), CISPO's default


def test_log_ratio_clamp_keeps_loss_finite():
    log_probs = torch.tensor([[100.0, -100.0]], requires_grad=True)
    loss, _ = ca.compute_policy_loss(
        torch.zeros(1, 2), log_probs, torch.tensor([[-1.0, 1.0]]), torch.ones(1, 2), 0.2, 0.2, 3.0, "token-mean"
    )
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(log_probs.grad).all()


def test_non_finite_log_probs_at_padding_do_not_poison_gradients():
    log_probs = torch.tensor([[-0.5, -1.0, -2.0]], requires_grad=True)
    old_log_probs = torch.tensor([[-0.6, float("-inf"), float("nan")]])
    mask = torch.tensor([[1, 0, 0]])
    loss, metrics = ca.compute_policy_loss(
        old_log_probs, log_probs, torch.ones(1, 3), mask, 0.2, 0.2, 3.0, "token-mean"
    )
    kl_losses = [ca.compute_kl_loss(log_probs, old_log_probs, mask, kind, "token-mean") for kind in ca.KL_KINDS[:4]]
    (loss + sum(kl_losses)).backward()
    assert torch.isfinite(log_probs.grad).all() and log_probs.grad[0, 1:].tolist() == [0.0, 0.0]
    assert math.isfinite(metrics["ppo_kl"])


@pytest.mark.parametrize(("advantage", "direction"), [(1.0, 1.0), (-1.0, -1.0)])
def test_policy_gradient_step_moves_log_prob_with_advantage_sign(advantage, direction):
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 5, requires_grad=True)
    labels = torch.randint(0, 5, (2, 3))
    before = ca.log_probs_from_logits(logits, labels).detach()
    loss, _ = ca.compute_policy_loss(
        old_log_probs=before,
        log_probs=ca.log_probs_from_logits(logits, labels),
        advantages=torch.full((2, 3), advantage),
        response_mask=torch.ones(2, 3),
        clip_ratio_low=0.2,
        clip_ratio_high=0.28,
        clip_ratio_dual=3.0,
        loss_agg_mode="token-mean",
    )
    loss.backward()
    with torch.no_grad():
        logits -= 0.1 * logits.grad
    after = ca.log_probs_from_logits(logits, labels).detach()
    assert bool((direction * (after - before) > 0).all())


# ------------------------------------------------------------------------------------------ KL

LOG_P = torch.log(torch.tensor([[0.5, 0.25]]))
LOG_REF = torch.log(torch.tensor([[0.25, 0.5]]))
LN2 = math.log(2)


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("kl", [LN2, -LN2]),
        ("abs", [LN2, LN2]),
        ("mse", [LN2**2 / 2, LN2**2 / 2]),
        # exp(-x) + x - 1 with x = +-ln 2
        ("low_var_kl", [0.5 + LN2 - 1, 2 - LN2 - 1]),
    ],
)
def test_kl_kinds_on_known_numbers(kind, expected):
    _assert_close(ca.kl_penalty(LOG_P, LOG_REF, kind), torch.tensor([expected]))


def test_low_var_kl_is_non_negative_and_clamped():
    torch.manual_seed(0)
    x = torch.randn(1000) * 3
    k3 = ca.kl_penalty(x, torch.zeros(1000), "low_var_kl")
    assert bool((k3 >= 0).all())
    far = ca.kl_penalty(torch.tensor([-30.0, 5.0, 30.0]), torch.zeros(3), "low_var_kl")
    _assert_close(far, torch.tensor([10.0, math.exp(-5) + 5 - 1, 10.0]))


def test_k2_and_k3_agree_to_second_order_for_small_ratios():
    x = torch.tensor([1e-3, -2e-3])
    k2 = ca.kl_penalty(x.double(), torch.zeros(2, dtype=torch.float64), "mse")
    k3 = ca.kl_penalty(x.double(), torch.zeros(2, dtype=torch.float64), "low_var_kl")
    _assert_close(k3, k2, rtol=3e-3, atol=0.0)


def test_k1_and_k3_are_unbiased_estimates_of_the_full_kl():
    probs = torch.tensor([0.5, 0.2, 0.2, 0.1])
    ref = torch.tensor([0.25, 0.25, 0.25, 0.25])
    exact = (probs * (probs / ref).log()).sum().item()
    generator = torch.Generator().manual_seed(0)
    samples = torch.multinomial(probs, 200_000, replacement=True, generator=generator)
    k1 = ca.kl_penalty(probs.log()[samples], ref.log()[samples], "kl").mean().item()
    k3 = ca.kl_penalty(probs.log()[samples], ref.log()[samples], "low_var_kl").mean().item()
    assert k1 == pytest.approx(exact, abs=5e-3)
    assert k3 == pytest.approx(exact, abs=5e-3)


def test_full_kl_from_logits_or_log_probs():
    # KL([0.5, 0.5] || [0.25, 0.75]) = 0.5 ln 2 + 0.5 ln(2/3) = 0.5 ln(4/3)
    log_p = torch.log(torch.tensor([[[0.5, 0.5]]]))
    log_ref = torch.log(torch.tensor([[[0.25, 0.75]]]))
    expected = torch.tensor([[0.5 * math.log(4 / 3)]])
    _assert_close(ca.kl_penalty(log_p, log_ref, "full"), expected)
    _assert_close(ca.kl_penalty(log_p + 3.0, log_ref - 7.0, "full"), expected)  # unnormalised logits
    with pytest.raises(ValueError, match=r"needs \(bs, L, V\)"):
        ca.kl_penalty(LOG_P, LOG_REF, "full")


def test_kl_unknown_kind_lists_valid_kinds():
    with pytest.raises(ValueError, match="valid kinds: kl, abs, mse, low_var_kl, full"):
        ca.kl_penalty(LOG_P, LOG_REF, "k4")


def test_kl_loss_aggregates_per_token_kl():
    log_probs = torch.tensor([[LN2, -LN2, 5.0]])
    mask = torch.tensor([[1, 1, 0]])
    loss = ca.compute_kl_loss(log_probs, torch.zeros(1, 3), mask, "low_var_kl", "token-mean")
    assert loss.item() == pytest.approx(((0.5 + LN2 - 1) + (2 - LN2 - 1)) / 2)


def test_apply_kl_penalty_puts_kl_in_every_valid_token():
    scores = torch.tensor([[0.0, 0.0, 1.0], [2.0, 0.0, 0.0]])
    log_probs = torch.tensor([[0.1, 0.2, 0.3], [0.4, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    rewards, mean_kl = ca.apply_kl_penalty(scores, log_probs, torch.zeros(2, 3), mask, kl_coef=0.5, kind="kl")
    _assert_close(rewards, torch.tensor([[-0.05, -0.1, 0.85], [1.8, 0.0, 0.0]]))
    assert mean_kl == pytest.approx((0.2 + 0.4) / 2)


def test_fixed_kl_controller_keeps_coefficient():
    controller = ca.FixedKLController(kl_coef=0.05)
    controller.update(current_kl=10.0, n_steps=100)
    assert controller.kl_coef == 0.05


def test_adaptive_kl_controller_hand_computed_and_moves_toward_target():
    controller = ca.AdaptiveKLController(kl_coef=0.1, target_kl=1.0, horizon=10)
    controller.update(current_kl=1.1, n_steps=1)  # error 0.1 -> x1.01
    assert controller.kl_coef == pytest.approx(0.101)
    controller.update(current_kl=5.0, n_steps=1)  # error clipped to 0.2 -> x1.02
    assert controller.kl_coef == pytest.approx(0.101 * 1.02)
    controller.update(current_kl=0.0, n_steps=5)  # error clipped to -0.2 -> x0.9
    assert controller.kl_coef == pytest.approx(0.101 * 1.02 * 0.9)

    # KL that shrinks as the coefficient grows (kl = 0.2 / coef) settles at the target.
    controller = ca.AdaptiveKLController(kl_coef=0.05, target_kl=1.0, horizon=10)
    for _ in range(200):
        controller.update(current_kl=0.2 / controller.kl_coef, n_steps=1)
    assert 0.2 / controller.kl_coef == pytest.approx(1.0, rel=1e-2)


def test_adaptive_kl_controller_rejects_bad_settings():
    with pytest.raises(ValueError, match="target_kl must be > 0"):
        ca.AdaptiveKLController(kl_coef=0.1, target_kl=0.0, horizon=10)
    with pytest.raises(ValueError, match="horizon must be > 0"):
        ca.AdaptiveKLController(kl_coef=0.1, target_kl=1.0, horizon=0)


# ------------------------------------------------------------------------ logits helpers


def test_entropy_of_uniform_logits_is_log_vocab():
    logits = torch.full((2, 3, 7), 4.2)
    _assert_close(ca.entropy_from_logits(logits), torch.full((2, 3), math.log(7)))


def test_entropy_matches_definition_and_is_stable_for_large_logits():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 11, dtype=torch.float64)
    probs = logits.softmax(-1)
    _assert_close(ca.entropy_from_logits(logits), -(probs * probs.log()).sum(-1))
    peaked = torch.tensor([[[1e4, 0.0, -1e4]]])
    entropy = ca.entropy_from_logits(peaked)
    assert torch.isfinite(entropy).all() and entropy.item() == pytest.approx(0.0, abs=1e-6)


def test_log_probs_from_logits_matches_log_softmax_gather():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 9) * 5
    labels = torch.randint(0, 9, (2, 4))
    expected = logits.log_softmax(-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    _assert_close(ca.log_probs_from_logits(logits, labels), expected)
    bf16 = ca.log_probs_from_logits(logits.bfloat16(), labels)
    assert bf16.dtype == torch.float32
    reference = logits.bfloat16().float().log_softmax(-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    _assert_close(bf16, reference)


def test_log_probs_from_logits_rejects_mismatched_labels():
    with pytest.raises(ValueError, match="labels shape"):
        ca.log_probs_from_logits(torch.zeros(2, 3, 5), torch.zeros(2, 4, dtype=torch.long))
