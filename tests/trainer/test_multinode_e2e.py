"""Two Ray nodes on this machine, joined with the commands of docs/recipes.md (Multi-node, by hand):
`ray start --head` and `ray start --address`, one CPU each, then the real CLI with trainer.nnodes=2
and trainer.ray_address. One run trains a step and saves, a second resumes and trains step 2, the
merger rebuilds the model; the ranks' node ids are the two nodes'. A second node whose view of the
checkpoint folder is not the driver's (its own mount namespace: a local folder bind-mounted over the
shared one) fails the run at start-up, naming that node.

Each test starts and stops its own cluster: own ports, own --temp-dir, an auth token of its own;
teardown signals the `ray start --block` processes it started (never `ray stop`, which would stop
every Ray on the machine).
"""

import json
import os
import re
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
import pytest

from verl.utils.checkpoint import RANK_FILES

REPO_ROOT = Path(__file__).resolve().parents[2]
RAY_CLI = [sys.executable, "-m", "ray.scripts.scripts"]  # `ray` of this venv
NODE_START_S = 120
PLACEMENT = re.compile(r"rank (\d+) on node ([0-9a-f]+) ")

pytestmark = pytest.mark.e2e


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
def two_nodes(log_dir: Path, second_node_prefix: tuple[str, ...] = ()):
    """A head and a second node, 1 CPU each, marked by the custom resources test_head / test_second.
    `second_node_prefix` runs the second `ray start` under another command (a mount namespace)."""
    temp_dir = tempfile.mkdtemp(prefix="raymn", dir="/tmp")  # Ray's socket paths must stay short
    port = free_port()
    address = f"127.0.0.1:{port}"
    # Every node and the driver carry the same token (Ray turns token auth on for a head that finds
    # ~/.ray/auth_token; a node without the token is then refused).
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32),
               RAY_DEDUP_LOGS="0", PYTHONUNBUFFERED="1")
    commands = [
        [*RAY_CLI, "start", "--head", "--port", str(port), "--num-cpus", "1", "--num-gpus", "0",
         "--resources", json.dumps({"test_head": 1}), "--include-dashboard=false",
         "--ray-client-server-port", str(free_port())],
        [*second_node_prefix, *RAY_CLI, "start", f"--address={address}", "--num-cpus", "1", "--num-gpus", "0",
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


def cli(cluster: TwoNodes, *overrides: str, timeout: int = 420) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "verl.trainer.main", "config=configs/tiny_cpu.yaml", *overrides],
        cwd=REPO_ROOT, env=cluster.env, capture_output=True, text=True, timeout=timeout,
    )


def two_node_args(cluster: TwoNodes, model: str, data: str, ckpt: str) -> list[str]:
    return [
        f"worker.actor.model.model_path={model}", f"data.train_files={data}/train.parquet", "data.val_files=''",
        f"trainer.save_checkpoint_path={ckpt}", f"trainer.ray_address={cluster.address}", "trainer.ray_num_cpus=null",
        "trainer.nnodes=2", "trainer.n_gpus_per_node=1", "trainer.val_before_train=false", "trainer.val_freq=-1",
        "trainer.save_freq=1", "trainer.worker_timeout_s=300",
        # the smallest step that still splits over 2 ranks: 2 prompts x 2 responses, short responses
        "data.rollout_batch_size=2", "worker.actor.global_batch_size=2", "worker.rollout.n=2",
        "worker.actor.micro_batch_size_per_device_for_update=2", "data.max_response_length=16",
    ]


def rank_nodes(output: str) -> dict[int, str]:
    line = next((line for line in output.splitlines() if line.startswith("workers: ")), None)
    assert line is not None, output[-3000:]
    return {int(rank): node for rank, node in PLACEMENT.findall(line)}


@pytest.mark.timeout(900)
def test_two_nodes_train_resume_and_merge(tiny_model_dir, synthetic_data_dir, tmp_path):
    ckpt = tmp_path / "shared" / "ckpt"
    with two_nodes(tmp_path) as cluster:
        args = two_node_args(cluster, tiny_model_dir, synthetic_data_dir, str(ckpt))
        first = cli(cluster, *args, "trainer.max_steps=1")
        assert first.returncode == 0, (first.stdout + first.stderr)[-6000:] + cluster.log_tails()
        placement = rank_nodes(first.stdout)
        assert sorted(placement) == [0, 1] and {placement[0], placement[1]} == {cluster.head_id, cluster.second_id}, (
            placement, cluster)
        second = cli(cluster, *args, "trainer.max_steps=2")
        output = second.stdout + second.stderr
        assert second.returncode == 0, output[-6000:] + cluster.log_tails()
        assert f"resumed from {ckpt}/global_step_1 (step 1)" in output
        assert set(rank_nodes(second.stdout).values()) == {cluster.head_id, cluster.second_id}
    print(f"node ids: head {cluster.head_id}, second {cluster.second_id}; ranks {placement}")
    records = [json.loads(line) for line in (ckpt / "metrics.jsonl").read_text().splitlines()]
    assert [record["step"] for record in records] == [1, 2]
    for step in (1, 2):
        files = set(os.listdir(ckpt / f"global_step_{step}" / "actor"))
        expected = {f"{kind}_world_size_2_rank_{rank}.pt" for kind in RANK_FILES for rank in (0, 1)}
        assert expected <= files, (step, sorted(files))
    # The merger checks every shard against the manifest the driver wrote from both ranks' digests.
    merged = tmp_path / "merged"
    merge = subprocess.run(
        [sys.executable, "scripts/model_merger.py", "--local_dir", str(ckpt / "global_step_2" / "actor"),
         "--target_dir", str(merged)],
        cwd=REPO_ROOT, env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)), capture_output=True, text=True, timeout=300,
    )
    assert merge.returncode == 0, (merge.stdout + merge.stderr)[-3000:]
    assert (merged / "config.json").is_file() and (merged / "model.safetensors").is_file()


def can_unshare_mounts() -> bool:
    return shutil.which("unshare") is not None and subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "true"], capture_output=True
    ).returncode == 0


@pytest.mark.timeout(600)
@pytest.mark.skipif(not can_unshare_mounts(), reason="needs `unshare --mount` (root or user namespaces)")
def test_a_node_without_the_shared_checkpoint_folder_fails_the_start_naming_it(tiny_model_dir, synthetic_data_dir,
                                                                               tmp_path):
    """No shared filesystem, simulated: the second node runs in its own mount namespace where the
    shared folder is replaced by a node-local one holding a folder of the same name, as when each
    node has its own disk at the same path."""
    shared, local = tmp_path / "shared", tmp_path / "second_node_disk"
    ckpt = shared / "ckpt"
    shared.mkdir()
    (local / "ckpt").mkdir(parents=True)
    prefix = ("unshare", "--mount", "--propagation", "private", "sh", "-c",
              'mount --bind "$1" "$2" && shift 2 && exec "$@"', "sh", str(local), str(shared))
    with two_nodes(tmp_path, prefix) as cluster:
        run = cli(cluster, *two_node_args(cluster, tiny_model_dir, synthetic_data_dir, str(ckpt)), "trainer.max_steps=1")
    output = run.stdout + run.stderr
    assert run.returncode == 1, output[-6000:]
    assert "1 of 2 nodes do not see what their ranks need" in run.stderr, output[-6000:]
    failing = [line for line in run.stderr.splitlines() if line.strip().startswith("node ")]
    assert len(failing) == 1 and failing[0].strip().startswith(f"node {cluster.second_id} "), run.stderr[-3000:]
    assert (f"trainer.save_checkpoint_path={ckpt} is not the driver's folder on this node" in run.stderr
            and "filesystem every node shares" in run.stderr), run.stderr[-3000:]
    assert "training forwards:" not in output  # stopped before the models were loaded
    assert not list(ckpt.glob("global_step_*")) and not list((local / "ckpt").iterdir())
