"""Two Ray nodes on this machine, joined with the commands of docs/recipes.md (Multi-node, by hand):
`ray start --head` and `ray start --address`, one CPU each, then the real CLI with trainer.nnodes=2
and trainer.ray_address. One run trains a step and saves, a second resumes and trains step 2, the
merger rebuilds the model; the ranks' node ids are the two nodes', and the run folder's
timeline.json holds every stage of both steps. A second node whose view of the
checkpoint folder is not the driver's (its own mount namespace: a local folder bind-mounted over the
shared one) fails the run at start-up, naming that node.

The cluster is tests/ray_nodes.py's: own ports, temp dir and auth token, stopped by pid.
"""

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from tests.ray_nodes import REPO_ROOT, TwoNodes, two_nodes
from verl.utils.checkpoint import RANK_FILES

PLACEMENT = re.compile(r"rank (\d+) on node ([0-9a-f]+) ")

pytestmark = pytest.mark.e2e


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
    # Stage timing: the stages run one after another, so the step's wall time holds both sides' busy time.
    for record in records:
        assert 0 < record["timing_s/generation_busy"] and 0 < record["timing_s/training_busy"]
        assert record["timing_s/generation_busy"] + record["timing_s/training_busy"] <= record["timing_s/step_wall"]
    # The timeline (Chrome trace) holds every stage of both steps, step 1's kept across the resume.
    trace = json.loads((ckpt / "timeline.json").read_text())
    stages = {(event["args"]["step"], event["name"]) for event in trace["traceEvents"] if event["ph"] == "X"}
    for step in (1, 2):
        assert {name for event_step, name in stages if event_step == step} == {
            "gen", "rollout_sleep", "reward", "ref", "adv", "update_actor", "sync", "save_checkpoint"}, stages
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
