"""The decode loop's sampler and KV cache, against transformers' own warpers and cache."""

import pytest
import torch
from transformers.cache_utils import DynamicLayer
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from verl.workers.rollout.base import SamplingConfig
from verl.workers.rollout.decode import GrowingKVLayer, sample_next

LOGITS = torch.tensor([2.0, 1.5, 0.3, 0.0, -0.4, -1.0, -3.0, 1.0])
DRAWS = 200_000


def hf_distribution(logits: torch.Tensor, sampling: SamplingConfig, banned: list[int]) -> torch.Tensor:
    """The distribution transformers' `generate` samples from: bans, then its warpers in order."""
    scores = logits.clone()[None]
    scores[:, banned] = float("-inf")
    warpers = [TemperatureLogitsWarper(sampling.temperature)]
    if sampling.top_k > 0:
        warpers.append(TopKLogitsWarper(sampling.top_k))
    if sampling.top_p < 1.0:
        warpers.append(TopPLogitsWarper(sampling.top_p))
    for warper in warpers:
        scores = warper(None, scores)
    return scores.softmax(-1)[0]


@pytest.mark.parametrize(
    "sampling, banned",
    [
        (SamplingConfig(temperature=1.0), []),
        (SamplingConfig(temperature=0.6), [1]),
        (SamplingConfig(temperature=1.3, top_k=3), []),
        (SamplingConfig(temperature=1.0, top_p=0.7), [0]),
        (SamplingConfig(temperature=0.8, top_k=5, top_p=0.9), [2, 7]),
    ],
    ids=["plain", "temperature-ban", "top-k", "top-p-ban", "all"],
)
def test_sampler_draws_from_the_distribution_generate_samples_from(sampling, banned):
    expected = hf_distribution(LOGITS, sampling, banned)
    generator = torch.Generator().manual_seed(0)
    tokens, logprobs = sample_next(LOGITS.expand(DRAWS, -1), sampling, torch.tensor(banned, dtype=torch.long), generator)
    frequencies = torch.bincount(tokens, minlength=LOGITS.numel()).double() / DRAWS

    # Tokens outside the support (banned, cut by top-k/top-p) are never drawn; the rest within
    # 5 standard errors of their probability.
    assert (frequencies[expected == 0] == 0).all()
    standard_error = (expected * (1 - expected) / DRAWS).sqrt().double()
    assert ((frequencies - expected.double()).abs() <= 5 * standard_error + 1e-12).all(), (frequencies, expected)
    # The returned log-prob is the raw one: before bans, temperature and truncation.
    assert torch.allclose(logprobs, torch.log_softmax(LOGITS, -1)[tokens])


def test_greedy_takes_the_best_token_that_is_not_banned():
    logits = torch.stack([LOGITS, LOGITS.flip(0)])
    tokens, _ = sample_next(logits, SamplingConfig(temperature=0.0), torch.tensor([0]), torch.Generator())
    assert tokens.tolist() == [1, 7]


def test_sampler_is_reproducible_from_its_generator_and_leaves_the_global_rng_alone():
    state = torch.random.get_rng_state()
    first, _ = sample_next(LOGITS.expand(64, -1), SamplingConfig(), torch.tensor([], dtype=torch.long), torch.Generator().manual_seed(3))
    second, _ = sample_next(LOGITS.expand(64, -1), SamplingConfig(), torch.tensor([], dtype=torch.long), torch.Generator().manual_seed(3))
    assert torch.equal(first, second)
    assert torch.equal(torch.random.get_rng_state(), state)


def test_growing_layer_returns_what_concatenation_returns_without_reallocating():
    prompt_keys, prompt_values = torch.randn(2, 3, 5, 4), torch.randn(2, 3, 5, 4)
    growing = GrowingKVLayer(prompt_keys, prompt_values, capacity=8)
    dynamic = DynamicLayer()
    dynamic.update(prompt_keys, prompt_values)
    buffer = growing.keys.data_ptr()
    for _ in range(3):
        new_keys, new_values = torch.randn(2, 3, 1, 4), torch.randn(2, 3, 1, 4)
        keys, values = growing.update(new_keys, new_values)
        reference_keys, reference_values = dynamic.update(new_keys, new_values)
        assert torch.equal(keys, reference_keys) and torch.equal(values, reference_values)
    assert growing.get_seq_length() == 8 and growing.keys.data_ptr() == buffer
    with pytest.raises(RuntimeError, match="9 positions exceed the buffer's 8"):
        growing.update(torch.randn(2, 3, 1, 4), torch.randn(2, 3, 1, 4))


def test_rows_that_finish_early_leave_the_batch_and_the_rest_keep_the_trainers_log_probs(
    tiny_model_dir, synthetic_data_dir
):
    """Samples of mixed length (some stop early and are dropped from the batch mid-loop): every
    returned log-prob equals the trainer's recomputation of the sequence (its padded forward with
    its own mrope positions), so dropping finished rows and the preallocated cache change nothing."""
    from transformers import AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

    from verl.data.rl_dataset import RLDataset, collate_rl
    from verl.protocol import DataProto
    from verl.toy.tiny_model import TinyModelSpec
    from verl.workers.actor import forward_response_log_probs
    from verl.workers.rollout import make_rollout_engine
    from verl.workers.rollout.batching import build_rollout_batch, requests_from_batch

    spec, max_prompt, max_tokens = TinyModelSpec(), 512, 40
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    dataset = RLDataset(
        f"{synthetic_data_dir}/val.parquet", tokenizer, AutoProcessor.from_pretrained(tiny_model_dir),
        max_prompt_length=max_prompt, min_pixels=spec.min_pixels, max_pixels=spec.max_pixels,
        format_prompt="configs/format_prompt/r1v.jinja",
    )
    tensors, non_tensors = collate_rl([dataset[i] for i in range(4)], tokenizer.pad_token_id, max_prompt)
    prompts = DataProto.from_dict(tensors=tensors, non_tensors=non_tensors)
    engine = make_rollout_engine("hf", tiny_model_dir, min_pixels=spec.min_pixels, max_pixels=spec.max_pixels, dtype="float32")
    outputs = engine.generate(requests_from_batch(prompts), SamplingConfig(n=8, max_tokens=max_tokens, seed=0))
    lengths = [len(sample.token_ids) for samples in outputs for sample in samples]
    assert min(lengths) < max_tokens and max(lengths) == max_tokens, lengths  # rows did leave early

    batch = build_rollout_batch(prompts, outputs, max_tokens, tokenizer.pad_token_id)
    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation="sdpa")
    with torch.no_grad():
        log_probs, _ = forward_response_log_probs(model, batch, 1.0, False)
    mask = batch.batch["response_mask"].bool()
    gap = (log_probs - batch.batch["rollout_log_probs"]).abs()[mask]
    assert gap.max() < 1e-4, gap.max()


def test_grouped_sdpa_under_a_mask_equals_transformers_sdpa_that_repeats_the_heads():
    from types import SimpleNamespace

    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from verl.workers.rollout.decode import grouped_sdpa_attention

    module = SimpleNamespace(num_key_value_groups=3, is_causal=True, training=False)
    generator = torch.Generator().manual_seed(0)
    query = torch.randn(4, 6, 1, 16, generator=generator)
    key, value = torch.randn(4, 2, 9, 16, generator=generator), torch.randn(4, 2, 9, 16, generator=generator)
    mask = torch.ones(4, 1, 1, 9, dtype=torch.bool)
    mask[:2, ..., :3] = False  # left padding of two rows
    grouped, _ = grouped_sdpa_attention(module, query, key, value, mask, scaling=0.25)
    repeated, _ = sdpa_attention_forward(module, query, key, value, mask, scaling=0.25)
    assert torch.allclose(grouped, repeated, atol=1e-6)
    unmasked, _ = grouped_sdpa_attention(module, query, key, value, None, scaling=0.25)
    assert not torch.allclose(unmasked[:2], repeated[:2], atol=1e-3)  # the mask did act
