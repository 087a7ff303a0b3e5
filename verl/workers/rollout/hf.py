"""Rollout on plain transformers models, with its own full copy of the policy.

It mirrors the vLLM engine's role (a separate inference copy, synced after every update) with no
extra dependency: the reference the vLLM engine is tested against, and the default on CPU. Qwen2.5-VL
and Qwen3-VL decode through the project's own loop (`decode.py`: one prefill per prompt, a
preallocated KV cache, log-probs gathered per step); any other model through `generate`.

Log-probs: each returned log-prob is `log_softmax(raw_logits)[sampled_token]`, the distribution at
temperature 1 before any top-k/top-p/temperature or token suppression: exactly what the trainer
recomputes, so the rollout/trainer log-prob gap measures numerics only. vLLM returns the same
quantity with `logprobs_mode="raw_logprobs"`.
"""

from __future__ import annotations

import copy
from typing import Iterable

import torch
from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer, GenerationConfig

from verl.data.vision import expand_image_tokens, multimodal_token_types, processor_size_kwargs
from verl.models.qwen_vl import recurrent_layers
from verl.workers.rollout import RolloutTokenIds
from verl.workers.rollout.base import GenerationOutput, GenerationRequest, RolloutEngine, SamplingConfig
from verl.workers.rollout.decode import GROUPED_SDPA, TokenFilter, decode, supports_decode_loop

TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def truncate_at_stop(
    token_ids: list[int], logprobs: list[float], stop_ids: tuple[int, ...]
) -> GenerationOutput:
    """Cuts a generated row after its first stop token (kept); `finished` says whether one occurred.

    HF `generate` keeps emitting pad tokens for rows that stopped before the longest one.
    """
    for position, token in enumerate(token_ids):
        if token in stop_ids:
            return GenerationOutput(token_ids[: position + 1], logprobs[: position + 1], finished=True)
    return GenerationOutput(token_ids, logprobs, finished=False)


class HFRolloutEngine(RolloutEngine):
    """`RolloutEngine` on an `AutoModelForImageTextToText` (sdpa attention, eval mode).

    Requests are generated in micro-batches of at most `max_batch_size` sequences (prompts x n),
    left-padded. `decode_loop=False` decodes with `generate` even where the project's loop could.
    Images go through the checkpoint's image processor pinned to
    [`min_pixels`, `max_pixels`] (the trainer's range), prompt ids are expanded here, once.
    """

    def __init__(
        self,
        model_path: str,
        min_pixels: int,
        max_pixels: int,
        dtype: str = "float32",
        max_batch_size: int = 64,
        device: str | None = None,
        decode_loop: bool = True,
    ) -> None:
        if dtype not in TORCH_DTYPES:
            raise ValueError(f"dtype {dtype!r} not supported; expected one of {sorted(TORCH_DTYPES)}")
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.max_batch_size = max_batch_size
        self.image_size_kwargs = processor_size_kwargs(min_pixels, max_pixels)
        self.image_processor = AutoImageProcessor.from_pretrained(model_path)
        tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.model = AutoModelForImageTextToText.from_pretrained(
            model_path, dtype=TORCH_DTYPES[dtype], attn_implementation="sdpa"
        ).to(self.device)
        self.model.eval()
        self.model.requires_grad_(False)
        self.token_ids = RolloutTokenIds.from_tokenizer(tokenizer, self.model.config)
        self.merge_size = self.model.config.vision_config.spatial_merge_size
        self.recurrent = bool(recurrent_layers(self.model.config.get_text_config()))
        # generate() fills every unset option from model.generation_config; a real checkpoint's
        # (Qwen2.5-VL: repetition_penalty 1.05, top_k 1, ...) would silently change the sampler.
        self.model.generation_config = GenerationConfig(
            eos_token_id=list(self.token_ids.stop), pad_token_id=self.token_ids.pad
        )
        # Every parameter under each of its names (tied heads appear twice), for load_weights.
        self._parameters_by_name = dict(self.model.named_parameters(remove_duplicate=False))
        # The project's decode loop where the model qualifies (`decode_loop=False`: always
        # transformers' generate, the reference the loop is benchmarked against).
        self.uses_decode_loop = decode_loop and supports_decode_loop(self.model)
        if self.uses_decode_loop:  # the language model keeps grouped-query attention grouped under a mask
            self.model.set_attn_implementation({"text_config": GROUPED_SDPA, "vision_config": "sdpa"})

    def generate(
        self, requests: list[GenerationRequest], sampling: SamplingConfig
    ) -> list[list[GenerationOutput]]:
        """`sampling.n` outputs per request, in request order. A seed makes the call reproducible
        (for the same requests and `max_batch_size`) without touching the caller's RNG state."""
        prompts_per_batch = max(1, self.max_batch_size // (1 if sampling.greedy else sampling.n))
        outputs: list[list[GenerationOutput]] = []
        generator = torch.Generator(self.device)
        if sampling.seed is None:
            generator.seed()
        else:
            generator.manual_seed(sampling.seed)
        rng_devices = []
        if self.device.type == "cuda":
            rng_devices = [torch.cuda.current_device() if self.device.index is None else self.device.index]
        with torch.random.fork_rng(devices=rng_devices), torch.no_grad():
            if sampling.seed is not None:
                torch.manual_seed(sampling.seed)
            for start in range(0, len(requests), prompts_per_batch):
                outputs.extend(self._generate_batch(requests[start : start + prompts_per_batch], sampling, generator))
        return outputs

    def _generate_batch(
        self, requests: list[GenerationRequest], sampling: SamplingConfig, generator: torch.Generator
    ) -> list[list[GenerationOutput]]:
        inputs = self._model_inputs(requests)
        samples_per_prompt = 1 if sampling.greedy else sampling.n
        if self.uses_decode_loop:
            decoded = decode(
                self.model,
                inputs,
                sampling,
                TokenFilter(
                    forbidden=torch.tensor(self.token_ids.forbidden, dtype=torch.long),
                    stop=torch.tensor(self.token_ids.stop, dtype=torch.long),
                    min_tokens=sampling.min_tokens,
                ),
                self.token_ids.pad,
                samples_per_prompt,
                generator,
            )
            generated, logprobs = decoded.tokens, decoded.logprobs
        else:
            generated, logprobs = self._transformers_generate(requests, inputs, sampling, samples_per_prompt)
        rows = [
            truncate_at_stop(token_ids, row_logprobs, self.token_ids.stop)
            for token_ids, row_logprobs in zip(generated.tolist(), logprobs.tolist())
        ]
        if sampling.greedy:
            # Greedy decoding is deterministic: the n samples are n copies of one.
            return [[row] * sampling.n for row in rows]
        return [rows[index : index + sampling.n] for index in range(0, len(rows), sampling.n)]

    def _transformers_generate(
        self,
        requests: list[GenerationRequest],
        inputs: dict[str, torch.Tensor],
        sampling: SamplingConfig,
        samples_per_prompt: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens, raw log-probs), both (rows, steps), from `transformers.generate`: the path for
        models the decode loop does not serve (`supports_decode_loop`). Draws from torch's global
        RNG, which `generate` seeds and forks around the call."""
        config = GenerationConfig(
            do_sample=not sampling.greedy,
            temperature=None if sampling.greedy else sampling.temperature,
            top_p=None if sampling.greedy else sampling.top_p,
            # 0, not None, disables top-k: generate() replaces None by its global default, 50.
            top_k=None if sampling.greedy else max(sampling.top_k, 0),
            repetition_penalty=1.0,
            num_return_sequences=samples_per_prompt,
            max_new_tokens=sampling.max_tokens,
            min_new_tokens=sampling.min_tokens or None,
            eos_token_id=list(self.token_ids.stop),
            pad_token_id=self.token_ids.pad,
            bad_words_ids=[[token] for token in self.token_ids.forbidden],
            return_dict_in_generate=True,
            output_logits=True,
        )
        if samples_per_prompt > 1 and "image_grid_thw" in inputs and self.recurrent:
            # A recurrent decoder (Qwen3.5): its cache cannot be repeated after one prefill
            # (transformers 5.19's LinearAttentionLayer has no batch_repeat_interleave), and an
            # image batch that generate() expands for num_return_sequences samples from wrong
            # log-probs (up to 2.5 nats off the model's own forward of the same rows; cause inside
            # transformers not found). Each prompt is put in the batch n times instead.
            inputs = self._model_inputs([request for request in requests for _ in range(samples_per_prompt)])
            config = copy.copy(config)
            config.num_return_sequences = 1
            result = self.model.generate(**inputs, generation_config=config)
        elif samples_per_prompt > 1 and "image_grid_thw" in inputs:
            result = self._generate_from_shared_prefill(inputs, config, samples_per_prompt)
        else:
            result = self.model.generate(**inputs, generation_config=config)
        generated = result.sequences[:, inputs["input_ids"].shape[1] :]  # (rows, steps)
        # result.logits: one (rows, vocab) tensor per step, raw (before any logits processor).
        logprobs = torch.stack(
            [
                torch.log_softmax(step_logits.float(), dim=-1).gather(1, generated[:, step, None])[:, 0]
                for step, step_logits in enumerate(result.logits)
            ],
            dim=1,
        )
        return generated, logprobs

    def _generate_from_shared_prefill(self, inputs: dict[str, torch.Tensor], config: GenerationConfig, n: int):
        """`generate` for n samples per prompt with the prompt (and its images) computed ONCE.

        `num_return_sequences=n` repeats every prompt n times before the prefill, so the vision
        tower and the prompt's forward run n times: at the compute-bound benchmark shape (8
        prompts x 8 x 64 tokens, ~100-token image prompts) that repeated prefill was ~40% of
        generation. Here the prompts minus their last token are run once with a cache, the
        cache and the model's mrope offsets (`rope_deltas`) are repeated n times (the same row
        order as `num_return_sequences`), and `generate` continues from the last prompt token,
        so sampling draws from the same stream in the same order. Batches with an image only: the
        prefill's mrope positions come from the image grids (text-only prompts are short, and
        `generate` handles their left padding itself)."""
        prefix = {key: value[:, :-1] for key, value in inputs.items() if key in ("input_ids", "attention_mask", "mm_token_type_ids")}
        images = {key: value for key, value in inputs.items() if key in ("pixel_values", "image_grid_thw")}
        base = self.model.model
        base.rope_deltas = None  # computed afresh from this batch's prompts by the prefill
        prefill = self.model(**prefix, **images, use_cache=True, logits_to_keep=1)
        cache = prefill.past_key_values
        cache.batch_repeat_interleave(n)
        base.rope_deltas = base.rope_deltas.repeat_interleave(n, dim=0)
        config = copy.copy(config)
        config.num_return_sequences = 1
        return self.model.generate(
            input_ids=inputs["input_ids"].repeat_interleave(n, dim=0),
            attention_mask=inputs["attention_mask"].repeat_interleave(n, dim=0),
            past_key_values=cache,
            generation_config=config,
        )

    def _model_inputs(self, requests: list[GenerationRequest]) -> dict[str, torch.Tensor]:
        """Left-padded `input_ids`/`attention_mask`/`mm_token_type_ids` (batch, max_len) and,
        when any request has images, `pixel_values` (patches, dim) and `image_grid_thw` (images, 3)."""
        images = [image for request in requests for image in request.images]
        model_inputs: dict[str, torch.Tensor] = {}
        image_grid_thw = torch.zeros((0, 3), dtype=torch.long)
        if images:
            processed = self.image_processor(images=images, return_tensors="pt", **self.image_size_kwargs)
            image_grid_thw = processed["image_grid_thw"]
            model_inputs["pixel_values"] = processed["pixel_values"].to(self.device, self.model.dtype)
            model_inputs["image_grid_thw"] = image_grid_thw.to(self.device)
        expanded: list[list[int]] = []
        first_image = 0
        for index, request in enumerate(requests):
            if not request.prompt_ids:
                raise ValueError(f"request {index}: empty prompt_ids")
            grid = image_grid_thw[first_image : first_image + len(request.images)]
            try:
                expanded.append(
                    expand_image_tokens(request.prompt_ids, grid, self.token_ids.image, self.merge_size)
                )
            except ValueError as error:
                raise ValueError(f"request {index}: {error}") from error
            first_image += len(request.images)
        max_length = max(len(ids) for ids in expanded)
        input_ids = torch.full((len(expanded), max_length), self.token_ids.pad, dtype=torch.long)
        attention_mask = torch.zeros((len(expanded), max_length), dtype=torch.long)
        for row, ids in enumerate(expanded):
            input_ids[row, max_length - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, max_length - len(ids) :] = 1
        model_inputs["input_ids"] = input_ids.to(self.device)
        model_inputs["attention_mask"] = attention_mask.to(self.device)
        model_inputs["mm_token_type_ids"] = multimodal_token_types(
            input_ids, self.token_ids.image, self.model.config.video_token_id
        ).to(self.device)
        return model_inputs

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> int:
        """Copies each `(in-memory name, tensor)` into the existing parameter (no reallocation).

        Every parameter must be covered (a tied head through either of its names). Unknown
        names, shape mismatches and missing parameters raise, but only after `named_tensors` is
        exhausted: it may be a collective (FSDP all-gathers) that every rank must finish.
        Returns the bytes received.
        """
        loaded_bytes = 0
        loaded: set[int] = set()
        problems: list[str] = []
        with torch.no_grad():
            for name, tensor in named_tensors:
                loaded_bytes += tensor.numel() * tensor.element_size()
                parameter = self._parameters_by_name.get(name)
                if parameter is None:
                    problems.append(f"{name!r} is not a parameter of the rollout model")
                elif parameter.shape != tensor.shape:
                    problems.append(
                        f"{name!r} has shape {tuple(tensor.shape)}, expected {tuple(parameter.shape)}"
                    )
                else:
                    parameter.copy_(tensor)
                    loaded.add(id(parameter))
        missing = sorted(name for name, parameter in self._parameters_by_name.items() if id(parameter) not in loaded)
        if missing:
            problems.append(f"{len(missing)} parameters not provided, e.g. {missing[:5]}")
        if problems:
            raise ValueError("load_weights: " + "; ".join(problems))
        return loaded_bytes

    def sleep(self) -> None:
        """Moves the model to CPU between rollouts when it lives on an accelerator."""
        if self.device.type != "cpu":
            self.model.to("cpu")
            torch.cuda.empty_cache()

    def wake_up(self) -> None:
        """Brings the model back to its device before the next weight load / rollout."""
        if self.device.type != "cpu":
            self.model.to(self.device)
