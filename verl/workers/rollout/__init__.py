"""Rollout engines behind one interface (`base.RolloutEngine`) and the factory that builds them.

`make_rollout_engine("vllm", ...)` is the training engine; `"hf"` runs the same contract on plain
transformers `generate` (a reference for tests and a fallback where vLLM is unavailable). Engine
modules are imported on demand: importing vLLM costs seconds and is not needed for the HF engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from transformers import PretrainedConfig, PreTrainedTokenizerBase

from verl.workers.rollout.base import GenerationOutput, GenerationRequest, RolloutEngine, SamplingConfig

# Qwen's chat models end a turn with <|im_end|>; base-model style text ends with <|endoftext|>.
STOP_TOKENS = ("<|im_end|>", "<|endoftext|>")
# Vision placeholders: one of these inside a completion makes the next forward (the trainer's, or
# the self-reward pass) fail with "Image features and image tokens do not match".
VISION_TOKENS = ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")

ENGINE_NAMES = ("hf", "vllm")


@dataclass(frozen=True)
class RolloutTokenIds:
    """Token ids every engine needs: where to stop, what never to emit, what images expand."""

    stop: tuple[int, ...]
    forbidden: tuple[int, ...]
    pad: int
    image: int

    @classmethod
    def from_tokenizer(cls, tokenizer: PreTrainedTokenizerBase, config: PretrainedConfig) -> RolloutTokenIds:
        """Reads the ids from `tokenizer`; `config.image_token_id` must agree with it."""

        def token_id(token: str) -> int:
            ids = tokenizer.convert_tokens_to_ids([token])
            if not ids or ids[0] is None or ids[0] == tokenizer.unk_token_id:
                raise ValueError(f"tokenizer {tokenizer.name_or_path!r} has no token {token!r}")
            return ids[0]

        image = token_id("<|image_pad|>")
        if config.image_token_id != image:
            raise ValueError(
                f"config.image_token_id is {config.image_token_id} but the tokenizer maps "
                f"<|image_pad|> to {image}"
            )
        if tokenizer.pad_token_id is None:
            raise ValueError(f"tokenizer {tokenizer.name_or_path!r} has no pad token")
        return cls(
            stop=tuple(token_id(t) for t in STOP_TOKENS),
            forbidden=tuple(token_id(t) for t in VISION_TOKENS),
            pad=tokenizer.pad_token_id,
            image=image,
        )


def make_rollout_engine(name: str, model_path: str, **engine_kwargs: Any) -> RolloutEngine:
    """Builds the engine called `name` ("hf" or "vllm") on the checkpoint at `model_path`.

    `engine_kwargs` go to the engine's constructor (`HFRolloutEngine` / `VLLMRolloutEngine`):
    both take `min_pixels`, `max_pixels` and `dtype`; the rest is engine specific.
    """
    if name == "hf":
        from verl.workers.rollout.hf import HFRolloutEngine

        return HFRolloutEngine(model_path, **engine_kwargs)
    if name == "vllm":
        from verl.workers.rollout.vllm import VLLMRolloutEngine

        return VLLMRolloutEngine(model_path, **engine_kwargs)
    raise ValueError(f"unknown rollout engine {name!r}; expected one of {ENGINE_NAMES}")


__all__ = [
    "ENGINE_NAMES",
    "GenerationOutput",
    "GenerationRequest",
    "RolloutEngine",
    "RolloutTokenIds",
    "STOP_TOKENS",
    "SamplingConfig",
    "VISION_TOKENS",
    "make_rollout_engine",
]
