"""The padding-free training path on the tiny model: log-probs and gradients from trimmed,
token-budgeted micro-batches equal one forward over the fully padded batch (prompts left-padded
to max_prompt_length, responses right-padded), with image and text-only rows mixed."""

from collections import defaultdict

import pytest
import torch
from transformers import AutoModelForImageTextToText

from verl.protocol import DataProto
from verl.algorithms import core_algos
from verl.trainer.config import ActorConfig
from verl.workers.actor import PPOActor, compute_log_probs, forward_response_log_probs, split_micro_batches


BUDGET = 400  # tokens per micro-batch: forces several micro-batches of different widths


def load(model_dir):
    return AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")


def actor_config(mode: str) -> ActorConfig:
    config = ActorConfig(loss_agg_mode=mode, use_kl_loss=True, kl_loss_coef=0.1, entropy_coeff=0.01)
    config.micro_batch_size_per_device_for_update = 99
    return config


def gradients(model) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def padded_reference_gradients(model, data: DataProto, config: ActorConfig) -> dict[str, torch.Tensor]:
    """One forward over the whole padded batch, the loss of the mini-batch as written in the
    textbook (local means over this one batch)."""
    log_probs, entropy = forward_response_log_probs(model, data, 1.0, True, entropy_gradient=True)
    mask = data.batch["response_mask"].float()
    width = data.batch["responses"].shape[1]
    pg_loss, _ = core_algos.compute_policy_loss(
        data.batch["old_log_probs"], log_probs, data.batch["advantages"], mask,
        config.clip_ratio_low, config.clip_ratio_high, config.clip_ratio_dual, config.loss_agg_mode, width,
    )
    kl = core_algos.compute_kl_loss(
        log_probs, data.batch["ref_log_probs"], mask, config.kl_loss_type, config.loss_agg_mode, width
    )
    entropy_loss = core_algos.agg_loss(entropy, mask, config.loss_agg_mode, width)
    (pg_loss + config.kl_loss_coef * kl - config.entropy_coeff * entropy_loss).backward()
    return gradients(model)


def test_micro_batches_are_trimmed_and_several(padded_batch):
    groups = split_micro_batches(padded_batch, 99, BUDGET)
    assert len(groups) >= 3
    assert sorted(torch.cat([torch.as_tensor(g) for g in groups]).tolist()) == list(range(len(padded_batch)))


def test_log_probs_trimmed_equal_fully_padded(tiny_model_dir, padded_batch):
    model = load(tiny_model_dir)
    with torch.no_grad():
        expected_lp, expected_ent = forward_response_log_probs(model, padded_batch, 1.0, True)
    log_probs, entropy = compute_log_probs(model, padded_batch, 99, 1.0, True, max_token_len=BUDGET)
    mask = padded_batch.batch["response_mask"].bool()
    torch.testing.assert_close(log_probs[mask], expected_lp[mask], atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(entropy[mask], expected_ent[mask], atol=2e-5, rtol=1e-5)
    longest = int(padded_batch.batch["response_mask"].sum(-1).max())
    assert longest < log_probs.shape[1] and (log_probs[:, longest:] == 0).all()  # never computed: no micro-batch is that wide
    # Fixed row counts (no token budget) are trimmed too and give the same values.
    fixed, _ = compute_log_probs(model, padded_batch, 2, 1.0, False, max_token_len=None)
    torch.testing.assert_close(fixed[mask], expected_lp[mask], atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_gradients_trimmed_micro_batches_equal_fully_padded(tiny_model_dir, padded_batch, mode):
    config = actor_config(mode)
    reference_model = load(tiny_model_dir)
    expected = padded_reference_gradients(reference_model, padded_batch, config)

    model = load(tiny_model_dir)
    actor = PPOActor(model, config, total_optimizer_steps=1, temperature=1.0, max_token_len=BUDGET)
    metrics = defaultdict(list)
    assert actor.backward_mini_batch(padded_batch, metrics) == 0
    assert metrics["actor/micro_batches"] == [pytest.approx(len(split_micro_batches(padded_batch, 99, BUDGET)))]
    got = gradients(model)
    assert got.keys() == expected.keys()
    assert any("visual" in name and g.abs().sum() > 0 for name, g in got.items())  # images reach the loss
    for name, grad in expected.items():
        torch.testing.assert_close(got[name], grad, atol=1e-6, rtol=1e-4, msg=lambda m, name=name: f"{name}: {m}")


def test_on_policy_update_without_old_log_probs_equals_explicit_old_log_probs(tiny_model_dir, padded_batch):
    """Skipping the old-log-prob pass: the update's detached log-probs stand in for it exactly."""
    config = actor_config("token-mean")
    config.max_grad_norm = 1e9  # clipping would rescale the gradients compared below
    # The made-up 0.01 rollout gap below would get TIS weights exp(-0.01) (on by default);
    # this test compares the update with and without the old-log-prob pass, nothing else.
    config.rollout_correction.mode = "off"
    explicit_model = load(tiny_model_dir)
    old, _ = compute_log_probs(explicit_model, padded_batch, 99, 1.0, False, max_token_len=BUDGET)
    explicit = PPOActor(explicit_model, config, 1, 1.0, max_token_len=BUDGET)
    explicit.backward_mini_batch(DataProto.from_dict(
        tensors={**padded_batch.batch, "old_log_probs": old}, non_tensors=dict(padded_batch.non_tensor_batch)))
    expected = gradients(explicit_model)

    model = load(tiny_model_dir)
    tensors = {k: v for k, v in padded_batch.batch.items() if k != "old_log_probs"}
    tensors["rollout_log_probs"] = old + 0.01 * padded_batch.batch["response_mask"]
    on_policy = DataProto.from_dict(tensors=tensors, non_tensors=dict(padded_batch.non_tensor_batch))
    actor = PPOActor(model, config, 1, 1.0, max_token_len=BUDGET)
    metrics = actor.update_policy(on_policy, num_mini_batches=1, step=1)
    assert metrics["actor/ppo_kl"] == 0.0 and metrics["actor/pg_clipfrac"] == 0.0
    assert metrics["rollout/logprob_gap_mean"] == pytest.approx(0.01, abs=1e-4)
    assert metrics["actor/entropy"] > 0
    # update_policy stepped the optimizer; compare the gradient it accumulated before the step.
    for name, param in model.named_parameters():
        if param.grad is not None:
            torch.testing.assert_close(param.grad, expected[name], atol=1e-6, rtol=1e-4, msg=lambda m, name=name: f"{name}: {m}")
    with pytest.raises(ValueError, match="only an on-policy update"):
        actor.update_policy(on_policy, num_mini_batches=2, step=2)


def test_loss_metrics_are_token_means_whatever_the_micro_batch_split(tiny_model_dir, padded_batch):
    """Clip fractions, the PPO KL and the rollout-correction ratios are means over the
    mini-batch's tokens: splitting its rows into several micro-batches does not change them."""
    config = actor_config("token-mean")
    tensors = dict(padded_batch.batch)
    tensors["rollout_log_probs"] = padded_batch.batch["old_log_probs"] + 0.5 * padded_batch.batch["response_mask"]
    data = DataProto.from_dict(tensors=tensors, non_tensors=dict(padded_batch.non_tensor_batch))
    results = []
    for budget in (BUDGET, 10**6):  # several micro-batches of unequal token counts, then one
        metrics = defaultdict(list)
        PPOActor(load(tiny_model_dir), config, 1, 1.0, max_token_len=budget).backward_mini_batch(data, metrics)
        results.append(metrics)
    several, one = results
    assert several["actor/micro_batches"][0] >= 3 and one["actor/micro_batches"][0] == 1
    assert one["actor/pg_clipfrac"][0] > 0 and one["rollout_corr/ratio_mean"][0] != 1.0
    for key in ("actor/pg_clipfrac", "actor/ppo_kl", "rollout_corr/ratio_mean", "rollout_corr/ratio_max"):
        assert several[key] == [pytest.approx(one[key][0], rel=1e-5, abs=1e-7)], key
