"""The external judge's time limits against a real local server that stalls mid-response."""

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from verl.trainer.perception_judge import JudgeTimeoutError, OpenAIJudge


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
    judge = OpenAIJudge(stalling_server.base_url, "m", None, timeout_s=0.5, max_retries=1, max_workers=2)
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
