"""External perception judge: the self-reward's re-prompt answered by an OpenAI-compatible
chat-completions server instead of the policy (the reference's external-LLM recipe).

The API key comes from the environment variable the config names, never from a file in the
repository. A request that fails after the bounded retries is a judge error: logged, counted,
and scored 0, never as correct.
"""

from __future__ import annotations

import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor

import requests

from verl.trainer.config import SelfRewardConfig

logger = logging.getLogger(__name__)


class OpenAIJudge:
    def __init__(self, base_url: str, model: str, api_key: str | None, timeout_s: float, max_retries: int, max_workers: int):
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.headers = {"Content-Type": "application/json"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.max_workers = max_workers
        self.errors: list[str] = []

    def _ask(self, prompt: str, n: int) -> list[str] | None:
        payload = {"model": self.model, "messages": [{"role": "user", "content": prompt}], "n": n, "temperature": 0.0 if n == 1 else 1.0}
        last_error = ""
        for attempt in range(self.max_retries + 1):
            try:
                response = requests.post(self.url, json=payload, headers=self.headers, timeout=self.timeout_s)
                response.raise_for_status()
                choices = response.json()["choices"]
                answers = [choice["message"]["content"] for choice in choices]
                if len(answers) != n:
                    raise ValueError(f"asked for {n} choices, got {len(answers)}")
                return answers
            except (requests.RequestException, KeyError, ValueError, TypeError) as error:
                last_error = f"{type(error).__name__}: {error}"
                if attempt < self.max_retries:
                    time.sleep(min(2.0, 0.2 * 2**attempt))
        self.errors.append(last_error)
        logger.warning("perception judge %s failed after %d tries: %s", self.url, self.max_retries + 1, last_error)
        return None

    def reanswer(self, reprompts: list[str], n: int) -> list[list[str] | None]:
        with ThreadPoolExecutor(max_workers=self.max_workers) as pool:
            return list(pool.map(lambda prompt: self._ask(prompt, n), reprompts))


def make_judge(config: SelfRewardConfig) -> OpenAIJudge | None:
    """None for `judge=policy` (the policy re-answers through the rollout engine)."""
    if config.judge == "policy":
        return None
    return OpenAIJudge(
        base_url=config.judge_base_url,
        model=config.judge_model,
        api_key=os.environ.get(config.judge_api_key_env),
        timeout_s=config.judge_timeout_s,
        max_retries=config.judge_max_retries,
        max_workers=config.judge_max_workers,
    )
