"""GAE's critic on the tiny model, in one process: values start at 0 (zero value head), one
clipped value update moves them towards the returns, a save/resume restores the model and the
optimizer exactly (the next update is identical), and the merger writes a loadable value model."""

import copy
import os

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForImageTextToText

from verl.models.value_head import attach_value_head, mark_value_checkpoint
from verl.utils import checkpoint
from verl.utils.model_merger import merge_checkpoint
from verl.workers.config import CriticConfig, OptimConfig
from verl.workers.critic import PPOCritic
from verl.workers.engine.model import build_policy


def make_critic(model_dir: str) -> PPOCritic:
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
    config = CriticConfig(optim=OptimConfig(lr=1e-3, weight_decay=0.0), micro_batch_size_per_device_for_update=2,
                          clip_range_value=10.0)
    return PPOCritic(attach_value_head(model), config, total_optimizer_steps=10)


def with_targets(batch, values):
    data = copy.deepcopy(batch)
    mask = data.batch["response_mask"].float()
    data.batch["values"] = values
    data.batch["returns"] = torch.linspace(-1.0, 1.0, mask.shape[0])[:, None] * mask
    return data


def squared_error(values, data) -> float:
    mask = data.batch["response_mask"].bool()
    return float((values - data.batch["returns"])[mask].square().mean())


@pytest.fixture(scope="module")
def trained(tiny_model_dir, padded_batch, tmp_path_factory):
    torch.manual_seed(0)
    critic = make_critic(tiny_model_dir)
    initial = critic.compute_values(padded_batch)
    data = with_targets(padded_batch, initial)
    metrics = critic.update_critic(data, num_mini_batches=1, step=1)
    root = tmp_path_factory.mktemp("critic_ckpt") / "critic"
    critic.engine.save(str(root))
    checkpoint.save_hf_metadata(tiny_model_dir, str(root / "huggingface"))
    mark_value_checkpoint(str(root))
    saved_values = critic.compute_values(padded_batch)  # later tests train `critic` further
    return critic, initial, data, metrics, root, saved_values


def test_gae_critic_starts_at_zero_and_one_update_moves_values_towards_returns(trained, padded_batch):
    critic, initial, data, metrics, _, _ = trained
    assert torch.count_nonzero(initial) == 0  # zero-initialised value head
    after = critic.compute_values(padded_batch)
    assert squared_error(after, data) < squared_error(initial, data)
    assert metrics["critic/vf_loss"] > 0 and metrics["critic/grad_norm"] > 0
    assert torch.count_nonzero(after[padded_batch.batch["response_mask"] == 0]) == 0  # padding stays 0


def test_gae_critic_save_resume_restores_model_and_optimizer(trained, tiny_model_dir, padded_batch):
    critic, _, data, _, root, _ = trained
    resumed = make_critic(tiny_model_dir)
    resumed.engine.resume(str(root))
    assert resumed.engine.optimizer_steps == 1
    assert torch.equal(resumed.compute_values(padded_batch), critic.compute_values(padded_batch))
    # The next update matches only if the AdamW moments were restored too.
    fresh = make_critic(tiny_model_dir)
    fresh.model.load_state_dict(critic.model.state_dict())
    for copy_of in (critic, resumed, fresh):
        copy_of.update_critic(data, num_mini_batches=1, step=2)
    original, restored, no_moments = (c.compute_values(padded_batch) for c in (critic, resumed, fresh))
    assert torch.allclose(restored, original, atol=1e-6)
    assert not torch.allclose(no_moments, original, atol=1e-6)


def test_gae_critic_merges_into_a_loadable_value_model(trained, padded_batch):
    critic, _, _, _, root, saved_values = trained
    # save_rank_state alone writes no manifest (the trainer adds it): merged unverified on purpose.
    result = merge_checkpoint(str(root), str(root.parent / "merged"), allow_unverified=True)
    assert AutoConfig.from_pretrained(result.target_dir).tie_word_embeddings is False
    assert load_file(os.path.join(result.target_dir, "model.safetensors"))["lm_head.weight"].shape[0] == 1
    # What worker.critic.model_path=<merged folder> loads (build_policy(value_model=True)).
    model = build_policy(result.target_dir, torch.device("cpu"), "sdpa", value_model=True)
    merged_critic = PPOCritic(model, critic.config, total_optimizer_steps=1)
    assert torch.allclose(merged_critic.compute_values(padded_batch), saved_values, atol=1e-6)
