"""The actor on the tiny model: its log-probs equal a plain Hugging Face forward of the same
batch, and one PPO update moves log-probs the way the advantages say."""

from collections import defaultdict

import numpy as np
import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

from verl.data.rl_dataset import RLDataset, collate_rl
from verl.protocol import DataProto
from verl.trainer.config import ActorConfig
from verl.workers.actor import PPOActor, compute_log_probs

RESPONSE_LENGTH = 6


@pytest.fixture(scope="module")
def batch(tiny_model_dir, synthetic_data_dir):
    """4 image prompts (left-padded) + fixed random responses (right-padded, last two rows shorter)."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    dataset = RLDataset(
        f"{synthetic_data_dir}/val.parquet", tokenizer, processor, max_prompt_length=512,
        min_pixels=3136, max_pixels=12544, format_prompt="configs/format_prompt/r1v.jinja",
    )
    tensors, non_tensors = collate_rl([dataset[i] for i in range(4)], tokenizer.pad_token_id, 512)
    generator = torch.Generator().manual_seed(0)
    responses = torch.randint(0, 600, (4, RESPONSE_LENGTH), generator=generator)
    response_mask = torch.ones(4, RESPONSE_LENGTH, dtype=torch.long)
    response_mask[2, 4:] = 0
    response_mask[3, 3:] = 0
    responses[response_mask == 0] = tokenizer.pad_token_id
    return DataProto.from_dict(
        tensors={
            "input_ids": torch.cat([tensors["input_ids"], responses], 1),
            "attention_mask": torch.cat([tensors["attention_mask"], response_mask], 1),
            "responses": responses,
            "response_mask": response_mask,
        },
        non_tensors={"multi_modal_inputs": non_tensors["multi_modal_inputs"]},
    )


def reference_log_probs(model, row: DataProto) -> torch.Tensor:
    """One unpadded sequence through the model exactly as a user would call it."""
    mask = row.batch["attention_mask"][0].bool()
    input_ids = row.batch["input_ids"][0][mask][None]
    mm = row.non_tensor_batch["multi_modal_inputs"][0]
    image_token = model.config.image_token_id
    with torch.no_grad():
        logits = model(
            input_ids=input_ids,
            pixel_values=mm["pixel_values"],
            image_grid_thw=mm["image_grid_thw"],
            mm_token_type_ids=(input_ids == image_token).int(),
        ).logits[0].float()
    n = int(row.batch["response_mask"][0].sum())  # the valid response is the tail of the unpadded row
    length = input_ids.shape[1]
    return torch.log_softmax(logits, -1)[torch.arange(length - n - 1, length - 1), input_ids[0, length - n :]]


def test_log_probs_equal_plain_hf_forward(tiny_model_dir, batch):
    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation="sdpa")
    log_probs, entropy = compute_log_probs(model, batch, micro_batch_size=3, temperature=1.0, with_entropy=True)
    assert log_probs.shape == (4, RESPONSE_LENGTH) and entropy.shape == (4, RESPONSE_LENGTH)
    for i in range(4):
        n = int(batch.batch["response_mask"][i].sum())
        expected = reference_log_probs(model, batch[i : i + 1])
        torch.testing.assert_close(log_probs[i, :n], expected, atol=2e-5, rtol=1e-5)
    assert (entropy > 0).all()


def test_metric_entropy_has_no_graph_and_the_bonus_entropy_has_one(tiny_model_dir, batch):
    from verl.workers.actor import forward_response_log_probs

    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation="sdpa")
    log_probs, metric = forward_response_log_probs(model, batch, 1.0, True)
    _, bonus = forward_response_log_probs(model, batch, 1.0, True, entropy_gradient=True)
    assert log_probs.requires_grad and not metric.requires_grad and bonus.requires_grad
    torch.testing.assert_close(metric, bonus.detach(), atol=1e-6, rtol=1e-6)


def test_chunked_metric_entropy_equals_the_whole_one():
    from verl.algorithms.core_algos import entropy_from_logits
    from verl.workers.actor import ENTROPY_CHUNK_TOKENS, entropy_without_gradient

    logits = torch.randn(3, ENTROPY_CHUNK_TOKENS, 50, generator=torch.Generator().manual_seed(0))  # 3 chunks
    torch.testing.assert_close(entropy_without_gradient(logits), entropy_from_logits(logits))


def test_one_update_moves_log_probs_with_advantage_sign(tiny_model_dir, batch):
    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation="sdpa")
    config = ActorConfig(
        micro_batch_size_per_device_for_update=2, micro_batch_size_per_device_for_experience=4,
        use_kl_loss=False, clip_ratio_low=0.2, clip_ratio_high=0.2,
    )
    config.optim.lr = 1e-3
    config.optim.weight_decay = 0.0
    actor = PPOActor(model, config, total_optimizer_steps=1, temperature=1.0)
    before, _ = actor.compute_log_probs(batch)
    sign = torch.tensor([1.0, -1.0, 1.0, -1.0])
    data = DataProto.from_dict(
        tensors={**batch.batch, "old_log_probs": before, "advantages": sign[:, None] * batch.batch["response_mask"]},
        non_tensors=dict(batch.non_tensor_batch),
    )
    metrics = actor.update_policy(data, num_mini_batches=1, step=1)
    after, _ = actor.compute_log_probs(batch)
    mask = batch.batch["response_mask"].bool()
    change = [((after[i] - before[i])[mask[i]]).mean().item() for i in range(4)]
    assert change[0] > 0 and change[2] > 0, change
    assert change[1] < 0 and change[3] < 0, change
    assert metrics["actor/grad_norm"] > 0 and np.isfinite(metrics["actor/pg_loss"])
    assert actor.engine.optimizer_steps == 1


def test_nan_advantages_raise_a_named_error(tiny_model_dir, batch):
    from verl.workers.engine.engine import NonFiniteLossError

    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir, dtype=torch.float32)
    actor = PPOActor(model, ActorConfig(micro_batch_size_per_device_for_update=4, use_kl_loss=False), 1, 1.0)
    old, _ = actor.compute_log_probs(batch)
    data = DataProto.from_dict(
        tensors={**batch.batch, "old_log_probs": old, "advantages": torch.full((4, RESPONSE_LENGTH), float("nan"))},
        non_tensors=dict(batch.non_tensor_batch),
    )
    with pytest.raises(NonFiniteLossError, match="step 7: non-finite actor loss"):
        actor.update_policy(data, num_mini_batches=1, step=7)


def _masked_mean(values, mask):
    return (values * mask).sum() / mask.sum()


def test_mis_rejected_tokens_leave_the_loss_its_denominator_and_the_kl(tiny_model_dir, batch):
    """verl's MIS (rejection sampling): a token whose pi_old / pi_rollout leaves [1/2, 2] is out of
    the policy loss, its token-mean denominator and the KL loss. Before, it stayed in both
    denominators as a zero-loss token and its KL was still trained."""
    from verl.algorithms.core_algos import kl_penalty
    from verl.workers.config import RolloutCorrectionConfig

    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation="sdpa")
    config = ActorConfig(
        micro_batch_size_per_device_for_update=2, use_kl_loss=True, kl_loss_type="low_var_kl",
        rollout_correction=RolloutCorrectionConfig(mode="mis", level="token", threshold=2.0),
    )
    actor = PPOActor(model, config, total_optimizer_steps=1, temperature=1.0)
    old, _ = actor.compute_log_probs(batch)
    mask = batch.batch["response_mask"].float()
    rollout = old.clone()
    rejected = torch.zeros_like(mask)
    rejected[0, 1] = rejected[1, 0] = rejected[2, 3] = 1.0
    rollout[rejected.bool()] -= 3.0  # ratio e^3 > 2: rejected
    advantages = torch.tensor([1.0, -2.0, 0.5, 4.0])[:, None] * torch.arange(1, RESPONSE_LENGTH + 1) * mask
    ref = old - 0.3 * torch.arange(RESPONSE_LENGTH) / RESPONSE_LENGTH
    data = DataProto.from_dict(
        tensors={**batch.batch, "old_log_probs": old, "rollout_log_probs": rollout, "advantages": advantages,
                 "ref_log_probs": ref},
        non_tensors=dict(batch.non_tensor_batch),
    )
    metrics = defaultdict(list)
    assert actor.backward_mini_batch(data, metrics) == 0
    accepted = mask * (1 - rejected)
    # On-policy (ratio 1): the PPO loss per token is -A.
    torch.testing.assert_close(metrics["actor/pg_loss"][0], _masked_mean(-advantages, accepted).item(), atol=1e-5, rtol=1e-5)
    expected_kl = _masked_mean(kl_penalty(old, ref, "low_var_kl"), accepted).item()
    torch.testing.assert_close(metrics["actor/kl_loss"][0], expected_kl, atol=1e-5, rtol=1e-4)
    assert metrics["rollout_corr/masked_frac"][0] == pytest.approx(3 / mask.sum().item())


def test_paper_v2_terms_are_aggregated_and_logged_apart(tiny_model_dir, batch):
    """Rows of two objective terms (answer, visual): each term's policy and KL loss is a token
    mean over its own rows, weighted by its lambda; logged per term."""
    from verl.algorithms.core_algos import kl_penalty
    from verl.workers.actor import OBJECTIVE_PART, OBJECTIVE_WEIGHT

    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation="sdpa")
    config = ActorConfig(micro_batch_size_per_device_for_update=3, use_kl_loss=True, kl_loss_coef=0.1)
    actor = PPOActor(model, config, total_optimizer_steps=1, temperature=1.0)
    old, _ = actor.compute_log_probs(batch)
    mask = batch.batch["response_mask"].float()
    advantages = torch.tensor([1.0, -2.0, 0.5, 3.0])[:, None] * mask
    ref = old - 0.2
    parts = torch.tensor([0, 0, 1, 1])
    data = DataProto.from_dict(
        tensors={**batch.batch, "old_log_probs": old, "advantages": advantages, "ref_log_probs": ref,
                 OBJECTIVE_PART: parts, OBJECTIVE_WEIGHT: torch.tensor([0.5, 0.5, 0.25, 0.25])},
        non_tensors=dict(batch.non_tensor_batch),
    )
    metrics = defaultdict(list)
    assert actor.backward_mini_batch(data, metrics) == 0
    kl = kl_penalty(old, ref, "low_var_kl")
    total_pg = total_kl = 0.0
    for part, name, weight in ((0, "answer", 0.5), (1, "visual", 0.25)):
        term_mask = mask * (parts == part)[:, None]
        pg, kl_term = _masked_mean(-advantages, term_mask).item(), _masked_mean(kl, term_mask).item()
        assert metrics[f"actor/pg_loss/{name}"][0] == pytest.approx(pg, abs=1e-5)
        assert metrics[f"actor/kl_loss/{name}"][0] == pytest.approx(kl_term, abs=1e-5)
        total_pg, total_kl = total_pg + weight * pg, total_kl + weight * kl_term
    assert metrics["actor/pg_loss"][0] == pytest.approx(total_pg, abs=1e-5)
    assert metrics["actor/kl_loss"][0] == pytest.approx(total_kl, abs=1e-5)


@pytest.mark.parametrize("ratio", [0.0, 0.6])
def test_papo_perception_kl_is_zero_without_masking_and_positive_with_it(tiny_model_dir, batch, ratio):
    """PAPO (2507.06448): KL(policy | image || policy | masked image) over the sampled tokens,
    one extra forward. Mask ratio 0: the two forwards are the same, the KL exactly 0 and the
    double entropy twice the policy's entropy."""
    from verl.workers.config import PAPOConfig

    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation="sdpa")
    config = ActorConfig(
        micro_batch_size_per_device_for_update=4, use_kl_loss=False,
        papo=PAPOConfig(enable=True, kl_coef=0.01, mask_ratio=ratio, entropy_coef=0.03),
    )
    actor = PPOActor(model, config, total_optimizer_steps=1, temperature=1.0)
    old, entropy = actor.compute_log_probs(batch)
    mask = batch.batch["response_mask"].float()
    data = DataProto.from_dict(
        tensors={**batch.batch, "old_log_probs": old, "advantages": mask.clone()},
        non_tensors=dict(batch.non_tensor_batch),
    )
    metrics = defaultdict(list)
    assert actor.backward_mini_batch(data, metrics) == 0
    if ratio == 0.0:
        assert metrics["actor/papo_kl"][0] == 0.0
        assert metrics["actor/papo_double_entropy"][0] == pytest.approx(2 * _masked_mean(entropy, mask).item(), rel=1e-4)
    else:
        assert metrics["actor/papo_kl"][0] > 1e-6
