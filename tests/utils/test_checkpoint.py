import os

import pytest
import torch

from verl.utils import checkpoint


def _fake_save(root, step):
    tmp = checkpoint.temporary_step_dir(root, step)
    with open(os.path.join(tmp, "dataloader.pt"), "w") as f:
        f.write("x")
    return tmp


def test_commit_publishes_atomically_and_latest_points_to_it(tmp_path):
    root = str(tmp_path)
    tmp = _fake_save(root, 3)
    assert checkpoint.find_latest_checkpoint(root) is None  # a .tmp dir is not a checkpoint
    final = checkpoint.commit_checkpoint(root, 3, tmp, save_limit=-1)
    assert final.endswith("global_step_3") and not os.path.exists(tmp)
    assert open(os.path.join(root, checkpoint.LATEST_FILE)).read() == "3"
    assert checkpoint.find_latest_checkpoint(root) == final


def test_crash_mid_save_leaves_previous_checkpoint_as_latest(tmp_path):
    root = str(tmp_path)
    checkpoint.commit_checkpoint(root, 1, _fake_save(root, 1), save_limit=-1)
    _fake_save(root, 2)  # the process dies before commit
    assert checkpoint.find_latest_checkpoint(root).endswith("global_step_1")
    assert checkpoint.list_checkpoints(root) == [1]


def test_stale_latest_file_falls_back_to_newest_complete(tmp_path):
    root = str(tmp_path)
    checkpoint.commit_checkpoint(root, 1, _fake_save(root, 1), save_limit=-1)
    with open(os.path.join(root, checkpoint.LATEST_FILE), "w") as f:
        f.write("7")
    assert checkpoint.find_latest_checkpoint(root).endswith("global_step_1")


def test_save_limit_prunes_oldest(tmp_path):
    root = str(tmp_path)
    for step in (1, 2, 3):
        checkpoint.commit_checkpoint(root, step, _fake_save(root, step), save_limit=2)
    assert checkpoint.list_checkpoints(root) == [2, 3]


def test_rank_state_round_trip_without_distributed(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    checkpoint.save_rank_state(str(tmp_path), 1, 0, model, optimizer, {"scheduler": {"k": 1}})
    expected_weight = model.weight.detach().clone()
    expected_rand = torch.rand(3)
    fresh = torch.nn.Linear(3, 2)
    fresh_optimizer = torch.optim.AdamW(fresh.parameters(), lr=0.1)
    extra = checkpoint.load_rank_state(str(tmp_path), 1, 0, fresh, fresh_optimizer)
    assert extra["scheduler"] == {"k": 1}
    assert torch.equal(fresh.weight, expected_weight)
    assert torch.equal(fresh_optimizer.state_dict()["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"])
    assert torch.equal(torch.rand(3), expected_rand)  # RNG restored to the saved point


def test_missing_shard_names_file_and_world_size(tmp_path):
    model = torch.nn.Linear(3, 2)
    checkpoint.save_rank_state(str(tmp_path), 1, 0, model, torch.optim.AdamW(model.parameters()), {})
    with pytest.raises(FileNotFoundError, match=r"lacks model_world_size_2_rank_0.pt \(this run has world size 2\)"):
        checkpoint.load_rank_state(str(tmp_path), 2, 0, model, torch.optim.AdamW(model.parameters()))


def test_step_of_rejects_other_directories():
    assert checkpoint.step_of("/a/global_step_12/") == 12
    with pytest.raises(ValueError, match="not a global_step_N"):
        checkpoint.step_of("/a/actor")


def _committed_with_manifest(root, step):
    from verl.utils.manifest import write_manifest

    tmp = _fake_save(root, step)
    os.makedirs(os.path.join(tmp, "actor"))
    with open(os.path.join(tmp, "actor", "model_world_size_1_rank_0.pt"), "wb") as f:
        f.write(bytes(range(256)) * 4)
    write_manifest(tmp)
    return checkpoint.commit_checkpoint(root, step, tmp, save_limit=-1)


def test_resume_falls_back_past_a_truncated_shard_naming_it(tmp_path):
    root = str(tmp_path)
    _committed_with_manifest(root, 1)
    newest = _committed_with_manifest(root, 2)
    shard = os.path.join(newest, "actor", "model_world_size_1_rank_0.pt")
    with open(shard, "r+b") as f:
        f.truncate(100)
    path, warnings = checkpoint.find_latest_intact_checkpoint(root)
    assert path.endswith("global_step_1")
    assert len(warnings) == 1 and shard in warnings[0] and "has 100 bytes" in warnings[0] and "1024" in warnings[0]


def test_flipped_bytes_unlisted_and_missing_files_fail_verification(tmp_path):
    root = str(tmp_path)
    path = _committed_with_manifest(root, 1)
    assert checkpoint.verify_checkpoint(path) == (True, None)
    shard = os.path.join(path, "actor", "model_world_size_1_rank_0.pt")
    data = bytearray(open(shard, "rb").read())
    data[10] ^= 0xFF
    open(shard, "wb").write(bytes(data))
    assert checkpoint.verify_checkpoint(path) == (False, f"{shard} fails its SHA-256 check (content differs from when it was written)")
    open(os.path.join(path, "stray.pt"), "w").write("x")
    assert "stray.pt is not in manifest.json" in checkpoint.verify_checkpoint(path)[1]
    os.remove(os.path.join(path, "stray.pt"))
    os.remove(os.path.join(path, "dataloader.pt"))
    assert "dataloader.pt is missing (listed in manifest.json)" in checkpoint.verify_checkpoint(path)[1]
    assert checkpoint.find_latest_intact_checkpoint(root)[0] is None


def test_a_checkpoint_without_manifest_loads_with_a_warning(tmp_path):
    root = str(tmp_path)
    path = checkpoint.commit_checkpoint(root, 1, _fake_save(root, 1), save_limit=-1)
    found, warnings = checkpoint.find_latest_intact_checkpoint(root)
    assert found == path and "no manifest.json" in warnings[0] and "unverified" in warnings[0]


def test_metrics_rows_after_the_resumed_step_are_superseded(tmp_path):
    import json

    from verl.utils.tracking import Tracker

    tracker = Tracker(["file"], "p", "e", str(tmp_path), {})
    for step in (0, 1, 2, 3):
        tracker.log({"x": float(step)}, step=step)
    tracker._file.write('{"step": 4, "x"')  # torn by a kill mid-write
    tracker._file.flush()
    assert tracker.drop_rows_from(3) == 2  # resuming from the step-2 checkpoint
    tracker.log({"x": 3.5}, step=3)
    tracker.close()
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [row["step"] for row in rows] == [0, 1, 2, 3] and rows[-1]["x"] == 3.5
    assert len(open(tmp_path / "metrics.jsonl.superseded").readlines()) == 2


def test_a_checkpoint_without_manifest_beside_ones_with_one_is_damaged(tmp_path):
    root = str(tmp_path)
    first = _committed_with_manifest(root, 1)
    newest = checkpoint.commit_checkpoint(root, 2, _fake_save(root, 2), save_limit=-1)  # no manifest
    assert checkpoint.verify_checkpoint(newest) == (True, f"{newest} has no manifest.json (written before integrity manifests): loaded unverified")
    found, warnings = checkpoint.find_latest_intact_checkpoint(root)
    assert found == first
    assert warnings == [
        f"checkpoint {newest} is damaged, skipped: {newest}/manifest.json is missing while other checkpoints in "
        f"{root} have one: its files cannot be checked"
    ]


def _write_step_2(root: str) -> str:
    """What a rank writes into a fresh global_step_2.tmp: a 4 MB model and its AdamW state."""
    tmp = checkpoint.temporary_step_dir(root, 2)
    model = torch.nn.Linear(1024, 1024)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 1024)).sum().backward()
    optimizer.step()
    checkpoint.save_rank_state(os.path.join(tmp, "actor"), 1, 0, model, optimizer, {})
    return tmp


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 2 MiB tmpfs: real ENOSPC from the kernel (mounting needs root)."""
    import subprocess

    mount_point = tmp_path / "tmpfs"
    mount_point.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs to fill needs root; this test runs as an unprivileged user")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_point)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"mount -t tmpfs failed here (a container without CAP_SYS_ADMIN?): {done.stderr.strip()}")
    try:
        yield str(mount_point)
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


def test_a_full_disk_names_folder_file_and_enospc_and_keeps_the_previous_checkpoint(small_tmpfs):
    root = small_tmpfs
    previous = _committed_with_manifest(root, 1)
    with pytest.raises(checkpoint.CheckpointWriteError) as error:
        _write_step_2(root)
    assert error.value.folder == os.path.join(root, "global_step_2.tmp", "actor")
    assert error.value.file == "model_world_size_1_rank_0.pt" and error.value.cause == "ENOSPC: No space left on device"
    assert str(error.value).startswith(
        f"checkpoint write failed in {root}/global_step_2.tmp/actor: model_world_size_1_rank_0.pt (ENOSPC: No space "
        "left on device)"
    )
    assert "unexpected pos" not in str(error.value)  # torch's own message named neither
    # Nothing that looks complete: step 2 exists only as .tmp; step 1 is still the latest, intact.
    assert checkpoint.list_checkpoints(root) == [1]
    assert checkpoint.find_latest_intact_checkpoint(root) == (previous, [])


def test_a_write_without_permission_names_folder_file_and_eacces(tmp_path):
    """A rank writes into an actor/ folder it may not write to. Root ignores permission bits, so
    as root the write runs in a child process without CAP_DAC_OVERRIDE (setpriv)."""
    import pickle
    import shutil
    import subprocess
    import sys

    prefix = []
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root, where permission bits do not bind, and setpriv (to drop that) is missing")
        prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]
    root = str(tmp_path)
    previous = _committed_with_manifest(root, 1)
    actor_dir = os.path.join(checkpoint.temporary_step_dir(root, 2), "actor")
    os.makedirs(actor_dir)
    os.chmod(actor_dir, 0o555)
    script = (
        "import pickle, sys, torch\n"
        "from verl.utils import checkpoint\n"
        "model = torch.nn.Linear(2, 2)\n"
        "try:\n"
        "    checkpoint.save_rank_state(sys.argv[1], 1, 0, model, torch.optim.AdamW(model.parameters()), {})\n"
        "except checkpoint.CheckpointWriteError as error:\n"
        "    sys.stdout.buffer.write(pickle.dumps(error))\n"
    )
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    done = subprocess.run(
        [*prefix, sys.executable, "-c", script, actor_dir], capture_output=True, env=dict(os.environ, PYTHONPATH=repo)
    )
    assert done.returncode == 0 and done.stdout, done.stderr.decode()[-2000:]
    error = pickle.loads(done.stdout)  # as Ray carries it from a worker to the driver
    assert (error.folder, error.file, error.cause) == (actor_dir, "model_world_size_1_rank_0.pt", "EACCES: Permission denied")
    assert checkpoint.list_checkpoints(root) == [1]
    assert checkpoint.find_latest_intact_checkpoint(root) == (previous, [])
