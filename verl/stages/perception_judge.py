"""External perception judge: the self-reward's re-prompt answered by an OpenAI-compatible
chat-completions server instead of the policy (the reference's external-LLM recipe).

The API key comes from the environment variable the config names, never from a file in the
repository. A request that fails after the bounded retries is a judge error: logged, counted,
and scored 0, never as correct. When more than `judge_max_error_rate` of one batch's requests
fail, the judge is down rather than flaky, and the batch raises JudgeFailedError naming the
endpoint and the first error: a run must not go on with a zeroed visual reward.
"""

from __future__ import annotations

import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
import requests

from verl.stages.config import DEFAULT_JUDGE_MAX_ERROR_RATE, SelfRewardConfig

logger = logging.getLogger(__name__)


class JudgeTimeoutError(RuntimeError):
    """The judge did not answer a whole batch within its total time limit."""


class JudgeFailedError(RuntimeError):
    """More than the allowed share of one batch's requests to a judge failed."""


DEFAULT_MAX_ERROR_RATE = DEFAULT_JUDGE_MAX_ERROR_RATE


def check_error_rate(judge: str, errors: list[str], requests: int, max_error_rate: float) -> None:
    """Raises JudgeFailedError when more than `max_error_rate` of `requests` failed; `errors`
    holds one description per failed request, in request order, and `judge` names the endpoint."""
    if requests and len(errors) > max_error_rate * requests:
        raise JudgeFailedError(
            f"judge {judge} failed on {len(errors)} of {requests} requests of this batch, more than "
            f"judge_max_error_rate={max_error_rate:g} allows; first error: {errors[0]}"
        )


class OpenAIJudge:
    """`timeout_s` bounds one request from connect to the last byte of the body (a server that
    stalls or trickles mid-response counts as failed; retries follow); `total_timeout_s` bounds
    one `reanswer` batch: past it no request is started or continued and the batch raises
    JudgeTimeoutError, since scoring the rest 0 would silently corrupt the reward; more than
    `max_error_rate` of a batch's requests failing raises JudgeFailedError for the same reason."""

    def __init__(
        self, base_url: str, model: str, api_key: str | None, timeout_s: float, max_retries: int, max_workers: int,
        total_timeout_s: float | None = None, max_error_rate: float = DEFAULT_MAX_ERROR_RATE,
    ):
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.headers = {"Content-Type": "application/json"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"
        self.timeout_s = timeout_s
        self.total_timeout_s = total_timeout_s
        self.max_retries = max_retries
        self.max_workers = max_workers
        self.max_error_rate = max_error_rate
        self.errors: list[str] = []

    def _post(self, payload: dict, deadline: float) -> dict:
        """One request whose body must be complete by `deadline` (time.monotonic())."""
        timeout = max(0.01, min(self.timeout_s, deadline - time.monotonic()))
        with requests.post(self.url, json=payload, headers=self.headers, timeout=timeout, stream=True) as response:
            response.raise_for_status()
            body = bytearray()
            # Each read waits at most `timeout` for the next bytes; the deadline caps the total.
            for chunk in response.iter_content(chunk_size=65536):
                body += chunk
                if time.monotonic() > deadline:
                    raise requests.Timeout(f"response body not complete within {self.timeout_s:g} s")
        return json.loads(body)

    def _ask(self, prompt: str, n: int, batch_deadline: float) -> list[str] | str:
        """The `n` answers, or (after the retries) the last error's description."""
        payload = {"model": self.model, "messages": [{"role": "user", "content": prompt}], "n": n, "temperature": 0.0 if n == 1 else 1.0}
        last_error = ""
        for attempt in range(self.max_retries + 1):
            if time.monotonic() >= batch_deadline:
                raise JudgeTimeoutError(last_error or "not started before the batch's time limit")
            try:
                choices = self._post(payload, min(time.monotonic() + self.timeout_s, batch_deadline))["choices"]
                answers = [choice["message"]["content"] for choice in choices]
                if len(answers) != n:
                    raise ValueError(f"asked for {n} choices, got {len(answers)}")
                return answers
            except (requests.RequestException, KeyError, ValueError, TypeError) as error:
                last_error = f"{type(error).__name__}: {error}"
                if attempt < self.max_retries:
                    time.sleep(min(2.0, 0.2 * 2**attempt))
        logger.warning("perception judge %s failed after %d tries: %s", self.url, self.max_retries + 1, last_error)
        return last_error

    def reanswer(self, reprompts: list[str], n: int) -> list[list[str] | None]:
        start = time.monotonic()
        batch_deadline = start + self.total_timeout_s if self.total_timeout_s is not None else float("inf")
        with ThreadPoolExecutor(max_workers=self.max_workers) as pool:
            futures = [pool.submit(self._ask, prompt, n, batch_deadline) for prompt in reprompts]
        # Every request ends by the batch deadline (plus one read timeout), so the pool has drained.
        late = [future.exception() for future in futures if isinstance(future.exception(), JudgeTimeoutError)]
        if late:
            raise JudgeTimeoutError(
                f"perception judge {self.url} answered {len(reprompts) - len(late)} of {len(reprompts)} re-prompts "
                f"within the batch limit of {self.total_timeout_s:g} s (judge_total_timeout_s); "
                f"last error: {late[-1]}"
            )
        results = [future.result() for future in futures]
        errors = [result for result in results if isinstance(result, str)]
        self.errors += errors
        check_error_rate(self.url, errors, len(reprompts), self.max_error_rate)
        return [None if isinstance(result, str) else result for result in results]


def make_judge(config: SelfRewardConfig) -> OpenAIJudge | None:
    """None for `judge=policy` (the policy re-answers through the rollout engine)."""
    if config.judge == "policy":
        return None
    return OpenAIJudge(
        base_url=config.judge_base_url,
        model=config.judge_model,
        api_key=os.environ.get(config.judge_api_key_env),
        timeout_s=config.judge_timeout_s,
        total_timeout_s=config.judge_total_timeout_s,
        max_retries=config.judge_max_retries,
        max_workers=config.judge_max_workers,
        max_error_rate=config.judge_max_error_rate,
    )
