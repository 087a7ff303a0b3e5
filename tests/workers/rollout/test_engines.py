"""The rollout contract, run on both engines (HF `generate` and vLLM) with the tiny Qwen2.5-VL.

Each engine is built once per module. Tests that change an engine's weights put the original
weights back before they return.
"""

import pytest
import torch
from PIL import Image, ImageDraw
from transformers import AutoModelForImageTextToText, AutoProcessor, AutoTokenizer, GenerationConfig

from verl.data.vision import resize_image
from verl.utils.tiny_model import TinyModelSpec
from verl.workers.rollout import (
    STOP_TOKENS,
    VISION_TOKENS,
    GenerationOutput,
    GenerationRequest,
    RolloutEngine,
    SamplingConfig,
    make_rollout_engine,
)
from verl.workers.rollout.hf import truncate_at_stop

SPEC = TinyModelSpec()
ENGINES = [pytest.param("hf", id="hf"), pytest.param("vllm", id="vllm", marks=pytest.mark.vllm)]
# Same prompts, same fp32 weights: the two engines differ only in kernels and summation order.
LOGPROB_TOLERANCE = 1e-3


def shapes_image(size: tuple[int, int], color: str) -> Image.Image:
    """A white canvas with one filled circle, resized to the shared pixel range."""
    image = Image.new("RGB", size, "white")
    width, height = size
    ImageDraw.Draw(image).ellipse((width // 4, height // 4, 3 * width // 4, 3 * height // 4), fill=color)
    return resize_image(image, SPEC.min_pixels, SPEC.max_pixels)


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def conversations() -> list[tuple[list[dict], list[Image.Image]]]:
    """Two image prompts of different image sizes (different pad counts) and a text prompt."""
    return [
        (
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What color is the circle?"}]}],
            [shapes_image((100, 80), "red")],
        ),
        (
            [{"role": "user", "content": "How many red circles are in the image?"}],
            [],
        ),
        (
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What shape is at the left?"}]}],
            [shapes_image((60, 130), "blue")],
        ),
    ]


@pytest.fixture(scope="module")
def requests_(tokenizer, conversations) -> list[GenerationRequest]:
    return [
        GenerationRequest(
            tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False),
            images,
        )
        for messages, images in conversations
    ]


@pytest.fixture(scope="module")
def stop_ids(tokenizer) -> set[int]:
    return set(tokenizer.convert_tokens_to_ids(list(STOP_TOKENS)))


@pytest.fixture(scope="module")
def vision_ids(tokenizer) -> set[int]:
    return set(tokenizer.convert_tokens_to_ids(list(VISION_TOKENS)))


@pytest.fixture(scope="module")
def hf_engine(tiny_model_dir) -> RolloutEngine:
    return make_rollout_engine(
        "hf", tiny_model_dir, min_pixels=SPEC.min_pixels, max_pixels=SPEC.max_pixels, dtype="float32"
    )


@pytest.fixture(scope="module")
def vllm_engine(tiny_model_dir) -> RolloutEngine:
    return make_rollout_engine(
        "vllm",
        tiny_model_dir,
        min_pixels=SPEC.min_pixels,
        max_pixels=SPEC.max_pixels,
        dtype="float32",
        max_model_len=512,
        enforce_eager=True,
        max_num_batched_tokens=512,
        max_num_seqs=64,
        cpu_kv_cache_space_gib=1,
    )


@pytest.fixture(params=ENGINES)
def engine(request) -> RolloutEngine:
    return request.getfixturevalue(f"{request.param}_engine")


@pytest.fixture(scope="module")
def original_weights(tiny_model_dir) -> list[tuple[str, torch.Tensor]]:
    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir, dtype=torch.float32)
    return [(name, parameter.detach().clone()) for name, parameter in model.named_parameters()]


@pytest.fixture(scope="module")
def updated_model(tiny_model_dir):
    """The tiny model after a seeded random 'update' large enough to change every greedy output."""
    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.2 * torch.randn(parameter.shape, generator=generator))
    return model


def token_ids(outputs: list[list[GenerationOutput]]) -> list[list[list[int]]]:
    return [[sample.token_ids for sample in samples] for samples in outputs]


def test_truncate_at_stop_keeps_the_first_stop_token_and_drops_the_padding():
    cut = truncate_at_stop([5, 7, 2, 0, 0], [-1.0, -2.0, -3.0, -4.0, -4.0], stop_ids=(2, 0))
    uncut = truncate_at_stop([5, 7, 9], [-1.0, -2.0, -3.0], stop_ids=(2, 0))

    assert cut == GenerationOutput([5, 7, 2], [-1.0, -2.0, -3.0], finished=True)
    assert uncut == GenerationOutput([5, 7, 9], [-1.0, -2.0, -3.0], finished=False)


def test_returns_n_samples_with_logprobs(engine, requests_):
    outputs = engine.generate(requests_, SamplingConfig(n=3, temperature=1.0, max_tokens=8, seed=0))

    assert len(outputs) == len(requests_)
    for samples in outputs:
        assert len(samples) == 3
        for sample in samples:
            assert 1 <= len(sample.token_ids) <= 8
            assert len(sample.logprobs) == len(sample.token_ids)
            assert all(-30.0 < logprob <= 0.0 for logprob in sample.logprobs)


def test_greedy_is_deterministic_and_copied_n_times(engine, requests_):
    greedy = SamplingConfig(n=2, temperature=0.0, max_tokens=12)

    first = engine.generate(requests_, greedy)
    second = engine.generate(requests_, greedy)

    assert token_ids(first) == token_ids(second)
    for samples in first:
        assert samples[0].token_ids == samples[1].token_ids


def test_seeded_sampling_is_reproducible(engine, requests_):
    def sample(seed: int) -> list[list[list[int]]]:
        return token_ids(engine.generate(requests_, SamplingConfig(n=4, temperature=1.0, max_tokens=12, seed=seed)))

    first = sample(7)

    assert sample(7) == first
    assert sample(8) != first
    # Different requests and different samples of one request draw from different streams.
    assert len({tuple(ids) for samples in first for ids in samples}) == 3 * 4


def test_top_k_one_samples_the_greedy_tokens(engine, requests_):
    greedy = engine.generate(requests_, SamplingConfig(n=1, temperature=0.0, max_tokens=8))
    top_1 = engine.generate(requests_, SamplingConfig(n=2, temperature=1.0, top_k=1, max_tokens=8, seed=3))

    assert token_ids(top_1) == [[ids, ids] for (ids,) in token_ids(greedy)]


def test_sampling_without_top_k_reaches_beyond_the_50_likeliest_tokens(engine, requests_):
    # transformers' generate() silently applies top_k=50 unless told otherwise; 96 draws from the
    # near-uniform tiny model (~480 tokens) give ~85 distinct first tokens, top-50 would cap them at 50.
    outputs = engine.generate(requests_[1:2], SamplingConfig(n=96, temperature=1.0, max_tokens=1, seed=0))

    assert len({sample.token_ids[0] for sample in outputs[0]}) > 50


def test_stops_at_eos_and_never_emits_vision_tokens(engine, requests_, stop_ids, vision_ids):
    # The random tiny model is close to uniform over ~480 tokens: in 48 x 48 sampled tokens EOS
    # occurs in some samples and not in others, and unsuppressed vision tokens would show up ~15 times (measured).
    max_tokens = 48
    outputs = engine.generate(requests_, SamplingConfig(n=16, temperature=1.0, max_tokens=max_tokens, seed=0))
    samples = [sample for per_request in outputs for sample in per_request]

    for sample in samples:
        assert not vision_ids & set(sample.token_ids)
        if sample.finished:
            assert sample.token_ids[-1] in stop_ids
            assert not stop_ids & set(sample.token_ids[:-1])
        else:
            assert len(sample.token_ids) == max_tokens
            assert not stop_ids & set(sample.token_ids)
    finished = sum(sample.finished for sample in samples)
    assert 0 < finished < len(samples)


def test_min_tokens_suppresses_stops_until_then(engine, requests_, stop_ids):
    # The same sampling as the EOS test above, where some of the 48-token samples stop early.
    outputs = engine.generate(
        requests_, SamplingConfig(n=16, temperature=1.0, max_tokens=48, min_tokens=48, seed=0)
    )
    for sample in (sample for per_request in outputs for sample in per_request):
        assert len(sample.token_ids) == 48
        assert not stop_ids & set(sample.token_ids[:-1])


def test_max_tokens_cut_is_not_finished(engine, requests_, stop_ids):
    outputs = engine.generate(requests_, SamplingConfig(n=1, temperature=0.0, max_tokens=3))

    for (sample,) in outputs:
        assert len(sample.token_ids) == 3
        assert not stop_ids & set(sample.token_ids)
        assert sample.finished is False


@pytest.mark.vllm
def test_greedy_hf_equals_vllm_with_close_logprobs(hf_engine, vllm_engine, requests_):
    greedy = SamplingConfig(n=1, temperature=0.0, max_tokens=24)

    hf_outputs = hf_engine.generate(requests_, greedy)
    vllm_outputs = vllm_engine.generate(requests_, greedy)

    assert token_ids(hf_outputs) == token_ids(vllm_outputs)
    gap = max(
        abs(hf_logprob - vllm_logprob)
        for (hf_sample,), (vllm_sample,) in zip(hf_outputs, vllm_outputs)
        for hf_logprob, vllm_logprob in zip(hf_sample.logprobs, vllm_sample.logprobs)
    )
    print(f"max |HF - vLLM| greedy log-prob gap (fp32): {gap:.2e}")
    assert gap < LOGPROB_TOLERANCE


def reference_greedy(model, processor, conversations, stop_ids: set[int], vision_ids: set[int], max_tokens: int):
    """Greedy completions of `model` via the HF processor (its own image-token expansion), one
    conversation at a time (no padding), vision tokens suppressed, cut after the first stop."""
    completions = []
    for messages, images in conversations:
        text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        inputs = processor(text=[text], images=images or None, return_tensors="pt")
        with torch.no_grad():
            sequences = model.generate(
                **inputs,
                do_sample=False,
                max_new_tokens=max_tokens,
                eos_token_id=sorted(stop_ids),
                pad_token_id=processor.tokenizer.pad_token_id,
                suppress_tokens=sorted(vision_ids),
            )
        completion = sequences[0, inputs["input_ids"].shape[1] :].tolist()
        stops = [position for position, token in enumerate(completion) if token in stop_ids]
        completions.append(completion[: stops[0] + 1] if stops else completion)
    return completions


def test_load_weights_then_greedy_matches_updated_model(
    engine, tiny_model_dir, requests_, conversations, updated_model, original_weights, stop_ids, vision_ids
):
    greedy = SamplingConfig(n=1, temperature=0.0, max_tokens=24)
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    expected = reference_greedy(updated_model, processor, conversations, stop_ids, vision_ids, max_tokens=24)
    before = token_ids(engine.generate(requests_, greedy))
    assert [completion for (completion,) in before] != expected

    loaded_bytes = engine.load_weights(
        (name, parameter.detach()) for name, parameter in updated_model.named_parameters()
    )
    after_update = token_ids(engine.generate(requests_, greedy))
    engine.load_weights(iter(original_weights))
    restored = token_ids(engine.generate(requests_, greedy))

    assert loaded_bytes == sum(parameter.numel() * 4 for parameter in updated_model.parameters())
    assert [completion for (completion,) in after_update] == expected
    # Same prompts again after a second reload: stale prefix/encoder caches would show here.
    assert restored == before


def test_load_weights_rejects_unknown_and_missing_names_and_stays_usable(engine, requests_, original_weights):
    greedy = SamplingConfig(n=1, temperature=0.0, max_tokens=6)
    before = token_ids(engine.generate(requests_, greedy))
    extra = ("model.language_model.layers.0.not_a_weight", torch.zeros(3))

    with pytest.raises(ValueError, match="not_a_weight"):
        engine.load_weights(iter([*original_weights, extra]))
    with pytest.raises(ValueError, match="not provided"):
        engine.load_weights(iter(original_weights[1:]))
    engine.load_weights(iter(original_weights))

    assert token_ids(engine.generate(requests_, greedy)) == before


def test_unknown_engine_name_is_rejected(tiny_model_dir):
    with pytest.raises(ValueError, match="unknown rollout engine 'sglang'"):
        make_rollout_engine("sglang", tiny_model_dir)


@pytest.mark.vllm
def test_vllm_multimodal_caches_hold_one_step_and_are_emptied_by_each_sync(vllm_engine, tokenizer, original_weights):
    """The colocated-vLLM hazard EasyR1 fixed: the processor cache (an LRU bounded only at 4 GiB) and
    the encoder cache keep one entry per image per step. Here each weight sync empties both, so
    over steps of new images they hold at most one step's images and cannot grow."""
    llm = vllm_engine.llm
    processor_cache = llm.llm_engine.renderer._mm_processor_cache._cache
    encoder_cache = llm.llm_engine.engine_core.engine_core.scheduler.encoder_cache_manager
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What color is it?"}]}],
        add_generation_prompt=True, tokenize=True, return_dict=False,
    )
    sampling = SamplingConfig(n=2, temperature=1.0, max_tokens=4, seed=0)
    vllm_engine.load_weights(iter(original_weights))  # a step boundary: earlier tests' images go
    for step in range(3):  # 4 new images per step, 2 samples each
        images = [shapes_image((60 + 10 * i, 80 + step), ("red", "blue", "green", "black")[i]) for i in range(4)]
        vllm_engine.generate([GenerationRequest(prompt, [image]) for image in images], sampling)
        assert len(processor_cache) == 4 and len(encoder_cache.cached) == 4, step
        vllm_engine.load_weights(iter(original_weights))
        assert len(processor_cache) == 0 and len(encoder_cache.cached) == 0, step


def count_prefill_work(model) -> tuple[list[int], list[int], list]:
    """Hooks recording each vision-tower call's patch count and each forward's input-id count."""
    vision_calls, prompt_tokens = [], []
    hooks = [
        model.model.visual.register_forward_hook(lambda module, args, output: vision_calls.append(args[0].shape[0])),
        model.register_forward_pre_hook(
            lambda module, args, kwargs: prompt_tokens.append(kwargs["input_ids"].numel()), with_kwargs=True
        ),
    ]
    return vision_calls, prompt_tokens, hooks


def test_hf_decode_loop_samples_n_from_one_prefill_as_if_from_n_copies(hf_engine, requests_):
    """The decode loop computes each prompt (and image) once for its n samples; the samples and
    log-probs are those of the same loop run on n copies of every prompt (n prefills)."""
    assert hf_engine.uses_decode_loop
    sampling = SamplingConfig(n=3, max_tokens=12, min_tokens=12, seed=7)
    vision_calls, prompt_tokens, hooks = count_prefill_work(hf_engine.model)
    try:
        shared = hf_engine.generate(requests_, sampling)
    finally:
        for hook in hooks:
            hook.remove()
    copies = [request for request in requests_ for _ in range(3)]
    reference = hf_engine.generate(copies, SamplingConfig(n=1, max_tokens=12, min_tokens=12, seed=7))

    assert [output.token_ids for outputs in shared for output in outputs] == [
        outputs[0].token_ids for outputs in reference
    ]
    gap = max(
        abs(a - b)
        for outputs, (copy,) in zip((o for outs in shared for o in outs), reference)
        for a, b in zip(outputs.logprobs, copy.logprobs)
    )
    assert gap < 1e-5
    inputs = hf_engine._model_inputs(requests_)
    assert vision_calls == [inputs["pixel_values"].shape[0]]
    assert prompt_tokens[0] == inputs["input_ids"].numel()
    assert len(prompt_tokens) == 12  # one prefill, then one forward of one token per row per step


def test_hf_generate_fallback_samples_from_one_shared_prefill_equal_num_return_sequences(hf_engine, requests_):
    """Models the decode loop does not serve go through `generate`, still prefilling each prompt
    once: the samples and log-probs are those of transformers' own `num_return_sequences`."""
    sampling = SamplingConfig(n=3, max_tokens=12, min_tokens=12, seed=7)
    model = hf_engine.model
    vision_calls, prompt_tokens, hooks = count_prefill_work(model)
    hf_engine.uses_decode_loop = False
    try:
        shared = hf_engine.generate(requests_, sampling)
    finally:
        hf_engine.uses_decode_loop = True
        for hook in hooks:
            hook.remove()
    inputs = hf_engine._model_inputs(requests_)
    with torch.random.fork_rng(), torch.no_grad():
        torch.manual_seed(sampling.seed)
        reference = model.generate(**inputs, generation_config=GenerationConfig(
            do_sample=True, temperature=1.0, top_p=1.0, top_k=0, num_return_sequences=3, max_new_tokens=12,
            min_new_tokens=12, eos_token_id=list(hf_engine.token_ids.stop), pad_token_id=hf_engine.token_ids.pad,
            bad_words_ids=[[token] for token in hf_engine.token_ids.forbidden],
        ))
    expected = reference[:, inputs["input_ids"].shape[1] :].tolist()
    assert [output.token_ids for outputs in shared for output in outputs] == expected
    # One vision pass over each image once (not n copies), and one prefill of the prompts.
    assert vision_calls == [inputs["pixel_values"].shape[0]]
    assert prompt_tokens[0] == inputs["input_ids"].numel() - len(requests_)
