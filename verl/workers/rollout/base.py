"""The one rollout interface. Every engine (HF `generate`, vLLM) implements it and passes the
same tests in tests/workers/rollout/.

Engines take *unexpanded* prompts: `prompt_ids` holds one `<|image_pad|>` token per image and the
images themselves are already resized by the shared processor configuration
(`verl.data.vision`). Each engine expands image tokens exactly once, itself, so token ids and
images are never expanded twice.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Iterable

import torch
from PIL import Image


@dataclass
class GenerationRequest:
    """One prompt: unexpanded token ids and its (already resized) images, possibly none."""

    prompt_ids: list[int]
    images: list[Image.Image] = field(default_factory=list)


@dataclass
class SamplingConfig:
    """How to sample. `temperature == 0` means greedy (then n copies are identical)."""

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    max_tokens: int = 64
    seed: int | None = None
    min_tokens: int = 0
    """Stop tokens are suppressed before this many tokens (equal-length responses for benchmarks)."""

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


@dataclass
class GenerationOutput:
    """One sampled response: token ids (EOS included when it stopped there), the engine's own
    log-prob of each sampled token (None when the engine does not return them)."""

    token_ids: list[int]
    logprobs: list[float] | None
    finished: bool  # stopped at EOS (False: hit max_tokens)


class RolloutEngine(abc.ABC):
    """Generates responses and accepts new policy weights."""

    @abc.abstractmethod
    def generate(
        self, requests: list[GenerationRequest], sampling: SamplingConfig
    ) -> list[list[GenerationOutput]]:
        """All requests in one batched call; returns `sampling.n` outputs per request, in order."""

    @abc.abstractmethod
    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> int:
        """Loads policy weights named as in the trainer's in-memory HF model
        (`model.named_parameters()`), invalidates every cache; returns bytes loaded."""

    def sleep(self) -> None:
        """Frees accelerator memory between rollouts (weights and caches); no-op by default."""

    def wake_up(self) -> None:
        """Undoes `sleep`; called before weight loading and generation; no-op by default."""
