"""Session-wide fixtures: the tiny Qwen2.5-VL and Qwen3-VL checkpoints, the synthetic dataset, and a real local
OpenAI-style chat server for the judge paths."""

import gc
import json
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TypeVar

import pytest
import torch

from verl.toy.synthetic import write_synthetic_dataset
from verl.toy.tiny_model import QWEN3_5_SPEC, QWEN3_VL_SPEC, build_tiny_model

# The tiny model gains nothing from more threads, and test machines share their cores.
torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Folder of the tiny random Qwen2.5-VL (seed 0), built once per test session."""
    return build_tiny_model(str(tmp_path_factory.mktemp("tiny_qwen2_5_vl")), seed=0)


@pytest.fixture(scope="session")
def tiny_qwen3_vl_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Folder of the tiny random Qwen3-VL (seed 0), built once per test session."""
    return build_tiny_model(str(tmp_path_factory.mktemp("tiny_qwen3_vl")), seed=0, spec=QWEN3_VL_SPEC)


@pytest.fixture(scope="session")
def tiny_qwen3_5_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Folder of the tiny random Qwen3.5 (seed 0; linear, full, linear attention layers), built once per test session."""
    return build_tiny_model(str(tmp_path_factory.mktemp("tiny_qwen3_5")), seed=0, spec=QWEN3_5_SPEC)


REPO_ROOT = Path(__file__).resolve().parents[1]
T = TypeVar("T")


@pytest.fixture(scope="session")
def synthetic_data_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A small synthetic shapes dataset (RL train/val parquet + sharegpt SFT file), built once."""
    out_dir = str(tmp_path_factory.mktemp("tiny_shapes"))
    write_synthetic_dataset(
        out_dir, str(REPO_ROOT / "configs/format_prompt/sr1.jinja"), seed=0, train_size=64, val_size=16, sft_size=32
    )
    return out_dir


class ChatServer:
    """A real OpenAI-style chat-completions server on 127.0.0.1 (random port), in a thread.

    ``reply(request_body) -> (status, text)``; every request body and header set is recorded.
    """

    def __init__(self, reply: Callable[[dict], tuple[int, str]]):
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append(body)
                server.headers.append(dict(self.headers))
                status, text = reply(body) if self.path == "/v1/chat/completions" else (404, "not found")
                payload = (
                    {"choices": [{"index": i, "message": {"role": "assistant", "content": text}}
                                 for i in range(body.get("n", 1))]}
                    if status == 200 else {"error": text}
                )
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                """Quiet: the test output is not the place for an access log."""

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> "ChatServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def chat_server() -> type[ChatServer]:
    """`with chat_server(reply) as server:` a real chat-completions server on 127.0.0.1."""
    return ChatServer


@contextmanager
def vllm_in_process(start: Callable[[], T]) -> Iterator[T]:
    """Yields the engine `start()` builds inside the test process: a `vllm.LLM`, or an object holding
    one at `.llm` (the rollout's `VLLMRolloutEngine`). On exit the engine is shut down and vLLM's
    process-global side effects are undone so later engines and tests are unaffected."""
    with pytest.MonkeyPatch.context() as patch:
        # In-process engine core: no engine subprocess, so the test needs no __main__ guard.
        patch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        patch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; the default sizes it from free RAM
        # vLLM's CPU worker replaces torch.set_num_threads with a no-op for the whole process.
        patch.setattr(torch, "set_num_threads", torch.set_num_threads)
        import vllm
        from vllm.distributed.parallel_state import destroy_distributed_environment, destroy_model_parallel

        engine = start()
        try:
            yield engine
        finally:
            getattr(engine, "llm", engine).llm_engine.engine_core.shutdown()
            del engine
            # The engine initialised a one-rank process group here, froze live objects out of garbage
            # collection and cached the VLLM_* variables; later engines in this process need them reset.
            destroy_model_parallel()
            destroy_distributed_environment()
            gc.unfreeze()
            vllm.envs.disable_envs_cache()


def in_process_vllm(model_dir: str) -> AbstractContextManager:
    """A plain `vllm.LLM` on `model_dir` inside the test process (fp32, eager); see vllm_in_process."""

    def start():
        import vllm

        return vllm.LLM(
            model=model_dir, dtype="float32", max_model_len=512, enforce_eager=True,
            limit_mm_per_prompt={"image": 1}, seed=0,
        )

    return vllm_in_process(start)


@pytest.fixture(scope="session")
def vllm_engine_on():
    """`with vllm_engine_on(model_dir) as llm:` an in-process vLLM engine (see in_process_vllm)."""
    return in_process_vllm


@pytest.fixture(scope="session")
def vllm_started():
    """`with vllm_started(lambda: VLLMRolloutEngine(...)) as engine:` any in-process vLLM engine,
    shut down and cleaned up on exit (see vllm_in_process)."""
    return vllm_in_process
