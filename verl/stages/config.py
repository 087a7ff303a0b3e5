"""The self-reward stage's settings (`self_reward.*` of a run's config)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from verl.rewards.format import TAG_STYLES
from verl.utils.ranges import AT_LEAST_ONE, FRACTION, NON_NEGATIVE, POSITIVE, PROBABILITY, Choices, Range

DEFAULT_JUDGE_MAX_ERROR_RATE = 0.1
"""Default `self_reward.judge_max_error_rate`: the share of one batch's requests that may fail
(each scored as a wrong answer) before the batch raises JudgeFailedError."""


@dataclass
class SelfRewardConfig:
    # Allowed values of the numeric fields (verl/utils/ranges.py), checked before Ray starts.
    RANGES: ClassVar[dict[str, Range]] = {
        "temperature": NON_NEGATIVE, "top_p": PROBABILITY, "max_response_length": AT_LEAST_ONE,
        "max_prompt_length": AT_LEAST_ONE, "answer_advantage_weight": NON_NEGATIVE,
        "visual_advantage_weight": NON_NEGATIVE, "judge_timeout_s": POSITIVE,
        "judge_total_timeout_s": POSITIVE, "judge_max_retries": NON_NEGATIVE,
        "judge_max_workers": AT_LEAST_ONE, "judge_max_error_rate": FRACTION, "n": AT_LEAST_ONE,
    }
    CHOICES: ClassVar[dict[str, Choices]] = {
        "missing_description": ("zero", "whole_response"), "objective": ("summed", "separate", "paper_v2"),
        "tags": TAG_STYLES, "judge": ("policy", "openai"),
    }

    enable: bool = False
    """Run the Vision-SR1 re-prompt pass (perception -> text-only re-answer)."""
    n: int = 1
    """Re-answers per response; the visual reward is their mean accuracy."""
    temperature: float = 1.0
    """Re-answer sampling temperature; 0 = greedy."""
    top_p: float = 1.0
    """Re-answer nucleus sampling."""
    max_response_length: int = 256
    """Tokens per re-answer."""
    max_prompt_length: int = 1024
    """Re-prompt token budget; a longer description is truncated (counted in metrics)."""
    missing_description: str = "zero"
    """zero: no (or an empty) perception -> visual reward 0, no re-prompt; whole_response: the
    reference's fallback (no block -> re-prompt with the whole response; an empty block -> with "")."""
    objective: str = "summed"
    """summed: the reference code (visual added to one reward); separate: the paper's (v2 on
    arXiv) two group-normalised advantages summed on the responses, pass-2 tokens trained with
    the visual advantage; paper_v2: the ICLR 2026 paper's objective, two GRPO terms each with its
    own KL term: the answer rollout with the answer advantage, the visual re-answer rollout with
    the visual advantage, each aggregated over its own tokens (docs/algorithms.md)."""
    answer_advantage_weight: float = 0.5
    """separate: weight of the answer (accuracy+format) advantage; paper_v2: lambda of the answer
    rollout's term (its policy loss and its KL loss)."""
    visual_advantage_weight: float = 0.5
    """separate: weight of the visual advantage (also the pass-2 tokens' advantage); paper_v2:
    lambda of the visual re-answer rollout's term (its policy loss and its KL loss)."""
    tags: str = "sr1"
    """Output tags: sr1 (<description>, <think>, \\boxed{}: the reference code) or paper_v2
    (<visual reasoning>, <think>, <answer>: the ICLR 2026 paper, with
    configs/format_prompt/sr1_paper_v2.jinja); the stage reads the perception block and asks the
    re-answer in this style. The sr1 reward's `tags` keyword must match."""
    judge: str = "policy"
    """policy: the same policy re-answers through the rollout engine; openai: an
    OpenAI-compatible server re-answers (external perception judge)."""
    judge_base_url: str = ""
    """openai judge: server URL, e.g. http://127.0.0.1:8000/v1."""
    judge_model: str = ""
    """openai judge: model name."""
    judge_api_key_env: str = "OPENAI_API_KEY"
    """openai judge: environment variable holding the key (never put keys in config files)."""
    judge_timeout_s: float = 30.0
    """openai judge: one request's limit, connect to last byte (a stalled or trickling reply fails
    and is retried)."""
    judge_total_timeout_s: float = 900.0
    """openai judge: limit for one step's whole batch of re-prompts; past it the run stops with an
    error naming the server (rather than scoring the unanswered rest 0)."""
    judge_max_retries: int = 2
    """openai judge: retries per request before the sample counts as a judge error."""
    judge_max_workers: int = 16
    """openai judge: concurrent requests."""
    judge_max_error_rate: float = DEFAULT_JUDGE_MAX_ERROR_RATE
    """openai judge: share of one step's requests that may fail (each scored as a wrong re-answer);
    more stops the run with an error naming the server and the first failure (1: never stop)."""
