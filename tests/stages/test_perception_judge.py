"""The external judge's time limits against a real local server that stalls mid-response, and its
failure share (judge_max_error_rate) against the real local ChatServer of tests/conftest.py."""

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from verl.trainer.config import ConfigError, PPOConfig, SelfRewardConfig
from verl.stages.perception_judge import JudgeFailedError, JudgeTimeoutError, OpenAIJudge, make_judge


class StallingServer:
    """Answers every POST with headers and half of a JSON body, then stalls for `stall_s`."""

    def __init__(self, stall_s: float):
        self.requests = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers["Content-Length"]))
                server.requests += 1
                body = b'{"choices": [{"index": 0, "message": {"role": "assistant", "content": "red"}}]}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                time.sleep(stall_s)

            def log_message(self, *args):
                """Quiet."""

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def stalling_server():
    server = StallingServer(stall_s=30)
    yield server
    server.close()


@pytest.mark.timeout(30)
def test_a_reply_stalled_mid_body_fails_the_request_after_its_timeout(stalling_server):
    judge = OpenAIJudge(
        stalling_server.base_url, "m", None, timeout_s=0.5, max_retries=1, max_workers=2, max_error_rate=1.0
    )
    start = time.monotonic()
    answers = judge.reanswer(["a", "b"], 1)
    elapsed = time.monotonic() - start
    assert answers == [None, None]  # judge errors, scored as wrong by the self-reward stage
    assert stalling_server.requests == 4  # one try + one retry per prompt
    assert len(judge.errors) == 2
    assert all("timed out" in error.lower() or "Timeout" in error for error in judge.errors), judge.errors
    assert elapsed < 4  # 2 tries x 0.5 s + a back-off, not the server's 30 s stall


@pytest.mark.timeout(30)
def test_a_batch_past_the_total_limit_raises_naming_the_server(stalling_server):
    judge = OpenAIJudge(
        stalling_server.base_url, "m", None, timeout_s=5.0, max_retries=5, max_workers=2, total_timeout_s=1.0
    )
    start = time.monotonic()
    with pytest.raises(JudgeTimeoutError) as raised:
        judge.reanswer(["a", "b", "c"], 1)
    elapsed = time.monotonic() - start
    assert stalling_server.base_url in str(raised.value)
    assert "0 of 3" in str(raised.value) and "judge_total_timeout_s" in str(raised.value)
    assert elapsed < 3  # the per-request limit (5 s) and retries are cut by the batch limit


def _fail_prompts_containing(marker: str):
    """A reply function for ChatServer: HTTP 500 for prompts containing `marker`, an answer otherwise."""
    def reply(body):
        prompt = body["messages"][0]["content"]
        return (500, f"cannot answer {prompt}") if marker in prompt else (200, "\\boxed{red}")
    return reply


def _judge(base_url: str, max_error_rate: float) -> OpenAIJudge:
    config = SelfRewardConfig(
        judge="openai", judge_base_url=base_url, judge_model="m", judge_max_retries=0, judge_max_workers=4,
        judge_max_error_rate=max_error_rate,
    )
    return make_judge(config)


def test_failures_up_to_the_allowed_share_are_scored_as_errors_and_past_it_stop_the_batch(chat_server):
    prompts = [f"question {i}" + (" FAIL" if i in (3, 7) else "") for i in range(10)]
    with chat_server(_fail_prompts_containing("FAIL")) as server:
        # 2 of 10 failed: within 20%, each failure is None (scored as a wrong re-answer).
        answers = _judge(server.base_url, 0.2).reanswer(prompts, 1)
        assert [i for i, answer in enumerate(answers) if answer is None] == [3, 7]
        # Past the default 10%: the batch raises naming the endpoint and the first failure.
        with pytest.raises(JudgeFailedError) as raised:
            _judge(server.base_url, SelfRewardConfig().judge_max_error_rate).reanswer(prompts, 1)
    message = str(raised.value)
    assert f"judge {server.base_url}/chat/completions failed on 2 of 10 requests" in message
    assert "judge_max_error_rate=0.1" in message
    assert "first error: HTTPError: 500 Server Error" in message


def test_an_unreachable_judge_stops_the_batch_naming_the_endpoint(chat_server):
    with chat_server(_fail_prompts_containing("never")) as server:
        base_url = server.base_url
    # The server is shut down: every request is refused.
    with pytest.raises(JudgeFailedError, match=rf"judge {base_url}/chat/completions failed on 3 of 3 requests.*"
                                               r"first error: ConnectionError"):
        _judge(base_url, 0.1).reanswer(["a", "b", "c"], 1)


def test_judge_max_error_rate_is_checked_like_its_neighbours():
    with pytest.raises(ConfigError, match=r"self_reward.judge_max_error_rate=1.5"):
        PPOConfig(self_reward=SelfRewardConfig(judge_max_error_rate=1.5)).validate()
