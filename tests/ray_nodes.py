"""A Ray cluster of two nodes on this machine, started with the commands of docs/recipes.md
(Multi-node, by hand): `ray start --head` and `ray start --address`. Each use starts and stops its own
cluster: own ports, own --temp-dir, an auth token of its own; teardown signals the `ray start
--block` processes it started (never `ray stop`, which would stop every Ray on the machine)."""

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil

REPO_ROOT = Path(__file__).resolve().parents[1]
RAY_CLI = [sys.executable, "-m", "ray.scripts.scripts"]  # `ray` of this venv
NODE_START_S = 120


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def node_ports() -> list[str]:
    """Every port a node opens, free ones picked here: fixed defaults (52365, 10001, ...) would clash
    with other Ray clusters on this machine; worker ports 0 = each worker takes a free one."""
    return [
        "--node-manager-port", str(free_port()), "--object-manager-port", str(free_port()),
        "--dashboard-agent-listen-port", str(free_port()), "--dashboard-agent-grpc-port", str(free_port()),
        "--runtime-env-agent-port", str(free_port()), "--metrics-export-port", str(free_port()),
        "--min-worker-port", "0", "--max-worker-port", "0",
    ]


@dataclass
class TwoNodes:
    address: str
    env: dict[str, str]
    head_id: str
    second_id: str
    logs: list[Path]

    def log_tails(self) -> str:
        return "\n".join(f"--- {log}:\n{log.read_text()[-2000:]}" for log in self.logs if log.exists())


def wait_for_nodes(address: str, env: dict[str, str], starters: list[subprocess.Popen], logs: list[Path]) -> dict:
    """{marker resource: node id} once both nodes are alive; fails naming a `ray start` that exited."""
    probe = (
        "import json, sys, time, ray\n"
        "ray.init(address=sys.argv[1], logging_level='ERROR')\n"
        "deadline = time.monotonic() + float(sys.argv[2])\n"
        "while time.monotonic() < deadline:\n"
        "    ids = {r: n['NodeID'] for n in ray.nodes() if n['Alive'] for r in n['Resources'] if r.startswith('test_')}\n"
        "    if len(ids) == 2:\n"
        "        print(json.dumps(ids)); break\n"
        "    time.sleep(1)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe, address, str(NODE_START_S)], env=env, capture_output=True,
                            text=True, timeout=NODE_START_S + 60)
    for starter, log in zip(starters, logs):
        assert starter.poll() is None, f"`ray start` exited with {starter.returncode}:\n{log.read_text()[-3000:]}"
    assert result.returncode == 0 and result.stdout.strip(), result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def stop(starters: list[subprocess.Popen]) -> None:
    """SIGTERM to each `ray start --block` we started: it drains and stops its own raylet, GCS and
    workers. Whatever of its process tree is left after 60 s is killed by pid."""
    trees = []
    for starter in starters:
        try:
            trees.append(psutil.Process(starter.pid).children(recursive=True))
        except psutil.NoSuchProcess:
            trees.append([])
        if starter.poll() is None:
            starter.send_signal(signal.SIGTERM)
    for starter, tree in zip(starters, trees):
        try:
            starter.wait(timeout=60)
        except subprocess.TimeoutExpired:
            starter.kill()
        for process in tree:
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass


@contextmanager
def two_nodes(log_dir: Path, second_node_prefix: tuple[str, ...] = (), cpus_per_node: int = 1):
    """A head and a second node of `cpus_per_node` CPUs, marked by the custom resources test_head /
    test_second. `second_node_prefix` runs the second `ray start` under another command (a mount
    namespace)."""
    temp_dir = tempfile.mkdtemp(prefix="raymn", dir="/tmp")  # Ray's socket paths must stay short
    port = free_port()
    address = f"127.0.0.1:{port}"
    # Every node and the driver carry the same token (Ray turns token auth on for a head that finds
    # ~/.ray/auth_token; a node without the token is then refused).
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32),
               RAY_DEDUP_LOGS="0", PYTHONUNBUFFERED="1")
    commands = [
        [*RAY_CLI, "start", "--head", "--port", str(port), "--num-cpus", str(cpus_per_node), "--num-gpus", "0",
         "--resources", json.dumps({"test_head": 1}), "--include-dashboard=false",
         "--ray-client-server-port", str(free_port())],
        [*second_node_prefix, *RAY_CLI, "start", f"--address={address}", "--num-cpus", str(cpus_per_node), "--num-gpus", "0",
         "--resources", json.dumps({"test_second": 1})],
    ]
    logs = [log_dir / "ray_head.log", log_dir / "ray_second.log"]
    starters: list[subprocess.Popen] = []
    try:
        for command, log in zip(commands, logs):
            command += ["--temp-dir", temp_dir, "--object-store-memory", str(200 * 2**20), "--disable-usage-stats",
                        "--block", *node_ports()]
            with open(log, "w") as out:
                starters.append(subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT))
        ids = wait_for_nodes(address, env, starters, logs)
        yield TwoNodes(address, env, ids["test_head"], ids["test_second"], logs)
    finally:
        stop(starters)
        shutil.rmtree(temp_dir, ignore_errors=True)
