"""The Vision-SR1 self-reward stage (arXiv 2508.19652).

For every rollout response: take its perception (the first `<description>` block), re-prompt
the same policy with the question and that text only (no image), and let it answer again. The
re-answer's correctness against the ground truth is the visual reward: a perception that lets
a blind reader answer is self-contained. All re-prompts of a batch go through the rollout
engine in ONE batched generation call (per rank), or to an external OpenAI-compatible judge.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from verl.data.format_prompt import build_reprompt
from verl.protocol import DataProto
from verl.rewards.format import extract_perception
from verl.trainer.clipping import PASS2_CLIP_RATIO, clip_ratio
from verl.trainer.config import SelfRewardConfig
from verl.workers.rollout.base import SamplingConfig

def perception_of(response: str, missing_description: str, tags: str = "sr1") -> str | None:
    """The perception a response commits to, or None when it has none.

    `zero`: a missing, unclosed or empty perception block (`<description>`, or `<visual
    reasoning>` with tags=paper_v2) is no perception. `whole_response` reproduces the reference
    code exactly: no block -> the whole response (which leaks the answer into the re-answer), an
    empty block -> the empty string (the reference re-asks with "")."""
    description = extract_perception(response, tags)
    if missing_description == "whole_response":
        return response if description is None else description
    return description or None


GenerateFn = Callable[[DataProto, SamplingConfig, int], DataProto]
"""(prompt rows, sampling, max_response_length) -> rollout rows; one engine call per rank."""


class ReanswerJudge(Protocol):
    """An external re-answerer (e.g. an OpenAI-compatible server): re-prompt texts -> n answers
    each, or None for a sample the judge failed on (counted as an error, never as correct)."""

    def reanswer(self, reprompts: list[str], n: int) -> list[list[str] | None]: ...


@dataclass
class SelfRewardOutput:
    """Per rollout row: its perception (None when missing) and its re-answers ([] when none).
    `pass2` holds the re-answer rows (tensors as any rollout, plus `parent_row`) when they ran
    through the policy, for the objective that trains pass-2 tokens. `reanswers_clipped`: per
    rollout row, how many of its re-answers were cut at `self_reward.max_response_length` (a cut
    re-answer usually lacks its `\\boxed{}` and scores visual 0); None when an external judge
    re-answered (its length limit is the server's, not visible here)."""

    descriptions: list[str | None]
    reanswers: list[list[str]]
    pass2: DataProto | None
    metrics: dict[str, float]
    reanswers_clipped: list[int] | None = None


class SelfRewardStage:
    def __init__(
        self,
        config: SelfRewardConfig,
        tokenizer: PreTrainedTokenizerBase,
        generate: GenerateFn | None,
        judge: ReanswerJudge | None = None,
    ):
        if (generate is None) == (judge is None):
            raise ValueError("SelfRewardStage needs exactly one of a policy generate function or an external judge")
        self.config = config
        self.tokenizer = tokenizer
        self.generate = generate
        self.judge = judge

    def sampling(self, validation: bool) -> SamplingConfig:
        cfg = self.config
        return SamplingConfig(
            n=1 if validation else cfg.n,
            temperature=0.0 if validation else cfg.temperature,
            top_p=cfg.top_p,
            max_tokens=cfg.max_response_length,
        )

    def reprompt_ids(self, text: str) -> tuple[list[int], bool]:
        """Chat-templated token ids of a re-prompt, cut to `max_prompt_length` by shortening the
        description's tail (the template and the question always survive); returns (ids, cut)."""
        messages = [{"role": "user", "content": text}]
        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        ids = list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)
        excess = len(ids) - self.config.max_prompt_length
        if excess <= 0:
            return ids, False
        prefix = "Text description: "
        description = text[len(prefix) : text.index("\nQuestion: ")]
        rest = text[text.index("\nQuestion: ") :]
        desc_ids = self.tokenizer.encode(description, add_special_tokens=False)
        keep = max(0, len(desc_ids) - excess - 8)  # margin: re-tokenising the cut text may merge differently
        cut_text = prefix + self.tokenizer.decode(desc_ids[:keep]) + rest
        ids = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": cut_text}], add_generation_prompt=True, tokenize=True
        )
        ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
        if len(ids) > self.config.max_prompt_length:
            raise ValueError(
                f"self-reward re-prompt is {len(ids)} tokens even without its description; raise "
                f"self_reward.max_prompt_length (now {self.config.max_prompt_length})"
            )
        return ids, True

    def run(self, responses: list[str], questions: list[str], validation: bool = False) -> SelfRewardOutput:
        """Re-answers every response's perception; `questions` are the `<image>`-free questions."""
        cfg = self.config
        descriptions = [perception_of(r, cfg.missing_description, cfg.tags) for r in responses]
        asked = [i for i, d in enumerate(descriptions) if d is not None]
        reanswers: list[list[str]] = [[] for _ in responses]
        missing = sum(not extract_perception(r, cfg.tags) for r in responses)
        metrics = {"self_reward/missing_description_rate": missing / max(len(responses), 1)}
        pass2 = None
        clipped: list[int] | None = None
        texts = [build_reprompt(descriptions[i], questions[i], cfg.tags) for i in asked]
        if self.judge is not None and asked:
            answers = self.judge.reanswer(texts, 1 if validation else cfg.n)
            errors = sum(a is None for a in answers)
            for i, answer in zip(asked, answers):
                # A judge error scores as one wrong re-answer: never correct, and visible in the rate.
                reanswers[i] = answer if answer is not None else [""]
            metrics["self_reward/judge_error_rate"] = errors / len(asked)
        elif asked:
            sampling = self.sampling(validation)
            pass2_prompts, truncated = self._prompt_rows(texts)
            pass2_prompts.non_tensor_batch["parent_row"] = np.array(asked, dtype=np.int64)
            pass2 = self.generate(pass2_prompts, sampling, cfg.max_response_length)
            decoded = self.tokenizer.batch_decode(
                [row[mask.bool()] for row, mask in zip(pass2.batch["responses"], pass2.batch["response_mask"])],
                skip_special_tokens=True,
            )
            clipped = [0] * len(responses)
            for parent, text, finished in zip(
                pass2.non_tensor_batch["parent_row"], decoded, pass2.non_tensor_batch["finished"]
            ):
                reanswers[int(parent)].append(text)
                clipped[int(parent)] += not finished
            metrics["self_reward/reprompt_truncated_rate"] = truncated / len(asked)
            # Share of re-answers that hit max_response_length before a stop token.
            metrics[PASS2_CLIP_RATIO] = clip_ratio(pass2.non_tensor_batch["finished"])
            metrics["self_reward/pass2_response_length"] = pass2.batch["response_mask"].sum(-1).float().mean().item()
        return SelfRewardOutput(
            descriptions=descriptions, reanswers=reanswers, pass2=pass2, metrics=metrics, reanswers_clipped=clipped
        )

    def _prompt_rows(self, texts: list[str]) -> tuple[DataProto, int]:
        """Text-only prompt rows, left-padded to self_reward.max_prompt_length, in the layout the
        rollout pass uses (so the same generation and log-prob code serves both)."""
        length = self.config.max_prompt_length
        pad = self.tokenizer.pad_token_id
        input_ids = torch.full((len(texts), length), pad, dtype=torch.long)
        attention_mask = torch.zeros((len(texts), length), dtype=torch.long)
        raw_ids = np.empty(len(texts), dtype=object)
        truncated = 0
        for row, text in enumerate(texts):
            ids, cut = self.reprompt_ids(text)
            truncated += cut
            input_ids[row, length - len(ids) :] = torch.tensor(ids)
            attention_mask[row, length - len(ids) :] = 1
            raw_ids[row] = ids
        multi_modal_inputs = np.empty(len(texts), dtype=object)
        multi_modal_inputs[:] = [{} for _ in texts]
        rows = DataProto.from_dict(
            tensors={"input_ids": input_ids, "attention_mask": attention_mask},
            non_tensors={"raw_prompt_ids": raw_ids, "multi_modal_inputs": multi_modal_inputs},
            meta_info={"pad_token_id": pad},
        )
        return rows, truncated
