"""A local judge model run through the project's own rollout engine (vLLM or HF), for LLM-judged scoring.

The reference's newest evaluation judges answers with a local Qwen2.5-14B-Instruct under vLLM;
``EngineJudge`` is that judge for any model folder. It answers text prompts the way the
OpenAI-compatible judge (``verl.stages.perception_judge.OpenAIJudge``) does, so the answer
judge of ``verl.eval.score`` takes either: ``reanswer(prompts, n)`` returns, per prompt, its
replies, or None when the judge failed on it. A failure is counted as an error by the caller,
never as a correct answer; more than ``max_error_rate`` of a batch failing raises
``JudgeFailedError`` naming the judge and the first error, as the OpenAI-compatible judge does.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable

from transformers import AutoConfig, AutoTokenizer, PreTrainedTokenizerBase

from verl.eval.generate import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS, build_engine
from verl.stages.perception_judge import DEFAULT_MAX_ERROR_RATE, check_error_rate
from verl.workers.rollout import GenerationRequest, RolloutEngine, SamplingConfig

logger = logging.getLogger(__name__)

JUDGE_MAX_PROMPT_TOKENS = 2048
"""Judge prompts are the question, the reference and the boxed answer: short; longer ones are cut from the left."""


class EngineJudge:
    """Greedy text-only replies of a local model through a ``RolloutEngine``; one engine call per batch."""

    def __init__(
        self, engine: RolloutEngine, tokenizer: PreTrainedTokenizerBase, max_tokens: int, name: str = "local engine",
        max_error_rate: float = DEFAULT_MAX_ERROR_RATE,
    ):
        self.engine = engine
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.name = name  # the judge (its model folder) in a JudgeFailedError
        self.max_error_rate = max_error_rate

    @classmethod
    def from_args(
        cls, args: argparse.Namespace, model_path: str, max_tokens: int,
        max_error_rate: float = DEFAULT_MAX_ERROR_RATE,
    ) -> "EngineJudge":
        """The judge on ``model_path`` with the command line's engine options (``add_engine_arguments``).

        The rollout engines run Qwen2.5-VL checkpoints (a Qwen2.5-VL-Instruct model judges text
        too); a text-only judge (the reference's Qwen2.5-14B-Instruct) is served with ``vllm serve``
        and reached as an OpenAI-compatible server instead.
        """
        if getattr(AutoConfig.from_pretrained(model_path), "image_token_id", None) is None:
            raise ValueError(
                f"judge model {model_path} is not a Qwen2.5-VL checkpoint, which the project's engines run: "
                f"serve it with `vllm serve {model_path}` and pass --answer_judge_base_url/--answer_judge_model"
            )
        tokenizer = AutoTokenizer.from_pretrained(model_path)
        engine = build_engine(
            args, model_path, DEFAULT_MIN_PIXELS, DEFAULT_MAX_PIXELS,
            context_length=JUDGE_MAX_PROMPT_TOKENS + max_tokens, max_images_per_prompt=0,
        )
        return cls(engine, tokenizer, max_tokens, f"local:{model_path}", max_error_rate)

    def _prompt_ids(self, prompt: str) -> list[int]:
        ids = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True
        )
        ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
        return ids[-JUDGE_MAX_PROMPT_TOKENS:]

    def reanswer(self, prompts: list[str], n: int) -> list[list[str] | None]:
        """``n`` greedy replies per prompt; None for a prompt the engine failed on (logged)."""
        if not prompts:
            return []
        sampling = SamplingConfig(n=n, temperature=0.0, max_tokens=self.max_tokens)
        requests = [GenerationRequest(prompt_ids=self._prompt_ids(prompt)) for prompt in prompts]
        errors: list[str] = []
        try:
            outputs = self.engine.generate(requests, sampling)
        except Exception:  # noqa: BLE001 - retried one by one so that one bad prompt fails alone
            logger.warning("judge engine failed on a batch of %d prompts; retrying one by one", len(prompts),
                           exc_info=True)
            outputs = []
            for request in requests:
                try:
                    outputs.extend(self.engine.generate([request], sampling))
                except Exception as error:  # noqa: BLE001 - counted as a judge error by the caller
                    logger.warning("judge engine failed on one prompt", exc_info=True)
                    errors.append(f"{type(error).__name__}: {error}")
                    outputs.append(None)
        check_error_rate(self.name, errors, len(prompts), self.max_error_rate)
        return [
            None if samples is None else
            [self.tokenizer.decode(sample.token_ids, skip_special_tokens=True) for sample in samples]
            for samples in outputs
        ]


class LazyJudge:
    """A judge built on its first request (e.g. after another engine has released the accelerator)."""

    def __init__(self, build: Callable[[], EngineJudge]):
        self.build = build
        self.judge: EngineJudge | None = None

    def reanswer(self, prompts: list[str], n: int) -> list[list[str] | None]:
        if self.judge is None:
            self.judge = self.build()
        return self.judge.reanswer(prompts, n)
