"""RayPPOTrainer.maybe_resume on checkpoints on disk (workers and dataloader stubbed): a damaged
newest checkpoint is skipped with a warning naming the file (printed once), rows logged after the
one resumed from are superseded, an explicitly named damaged checkpoint is an error, and so is a
folder whose checkpoints are all damaged unless the user asks for a fresh start."""

import json
import os
from types import SimpleNamespace

import pytest
import torch

from verl.trainer.config import PPOConfig
from verl.trainer.ray_trainer import RayPPOTrainer
from verl.utils.timeline import Timeline
from verl.trainer.resume_settings import run_settings, write_run_settings
from verl.utils import checkpoint
from verl.utils.manifest import write_manifest
from verl.utils.tracking import Tracker

OPTIMIZER_STEPS = 10


def _save(root: str, step: int, config: PPOConfig | None = None, manifest: bool = True) -> str:
    tmp = checkpoint.temporary_step_dir(root, step)
    os.makedirs(os.path.join(tmp, "actor"))
    torch.save({"w": torch.arange(256.0)}, os.path.join(tmp, "actor", "model_world_size_1_rank_0.pt"))
    torch.save({"epoch": 0, "offset": step, "seed": 1, "shuffle": True}, os.path.join(tmp, "dataloader.pt"))
    write_run_settings(tmp, run_settings(config or PPOConfig(), OPTIMIZER_STEPS))
    if manifest:
        write_manifest(tmp)
    return checkpoint.commit_checkpoint(root, step, tmp, save_limit=-1)


def _trainer(root: str, load_path: str | None = None, config: PPOConfig | None = None):
    loaded = []
    tracker = Tracker(["file"], "p", "e", root, {})
    for step in range(5):
        tracker.log({"x": float(step)}, step=step)
    config = config or PPOConfig()
    config.trainer.load_checkpoint_path = load_path
    trainer = SimpleNamespace(
        config=config,
        checkpoint_root=root,
        tracker=tracker,
        timeline=Timeline(root),
        global_step=0,
        total_optimizer_steps=OPTIMIZER_STEPS,
        workers=SimpleNamespace(execute_all=lambda method, path: loaded.append((method, path))),
        train_dataloader=SimpleNamespace(
            load_state_dict=lambda state: loaded.append(("dataloader", state)),
            state_dict=lambda: {"epoch": 0, "offset": 0, "seed": config.data.seed, "shuffle": config.data.shuffle},
        ),
    )
    return trainer, loaded


def _resume(trainer) -> None:
    try:
        RayPPOTrainer.maybe_resume(trainer)
    finally:
        trainer.tracker.close()


def test_a_truncated_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, capsys):
    root = str(tmp_path)
    first = _save(root, 3)
    newest = _save(root, 4)
    shard = os.path.join(newest, "actor", "model_world_size_1_rank_0.pt")
    with open(shard, "r+b") as f:
        f.truncate(200)
    trainer, loaded = _trainer(root)
    _resume(trainer)
    output = capsys.readouterr().out
    assert f"checkpoint {newest} is damaged, skipped: {shard} has 200 bytes" in output
    assert f"resumed from {first} (step 3)" in output
    assert trainer.global_step == 3 and loaded == [
        ("load_checkpoint", first), ("dataloader", {"epoch": 0, "offset": 3, "seed": 1, "shuffle": True}),
    ]
    steps = [json.loads(line)["step"] for line in open(tmp_path / "metrics.jsonl")]
    assert steps == [0, 1, 2, 3]  # step 4 will be trained and logged again, once


def test_an_explicitly_named_damaged_checkpoint_is_an_error(tmp_path):
    root = str(tmp_path)
    path = _save(root, 2)
    os.remove(os.path.join(path, "dataloader.pt"))
    trainer, loaded = _trainer(root, load_path=path)
    with pytest.raises(checkpoint.CheckpointError, match=rf"trainer.load_checkpoint_path={path} is damaged: .*dataloader.pt is missing"):
        _resume(trainer)
    assert loaded == []


def test_each_skip_warning_is_emitted_once(tmp_path, capfd, caplog):
    """It was printed and also logged; with no logging configured (the CLI), Python's last-resort
    handler echoed the log record on stderr: every warning appeared twice."""
    root = str(tmp_path)
    _save(root, 1)
    newest = _save(root, 2)
    os.remove(os.path.join(newest, "dataloader.pt"))
    trainer, _ = _trainer(root)
    _resume(trainer)
    out, err = capfd.readouterr()
    line = f"checkpoint {newest} is damaged, skipped"
    emitted = out.count(line) + err.count(line) + sum(line in record.getMessage() for record in caplog.records)
    assert emitted == 1, (out, err, caplog.text)


def test_a_checkpoint_whose_manifest_was_deleted_beside_manifested_ones_is_damaged(tmp_path, capsys):
    root = str(tmp_path)
    first = _save(root, 1)
    newest = _save(root, 2, manifest=False)  # its manifest deleted: nothing tells what its files should be
    trainer, loaded = _trainer(root)
    _resume(trainer)
    output = capsys.readouterr().out
    assert f"checkpoint {newest} is damaged, skipped: {newest}/manifest.json is missing while other checkpoints" in output
    assert loaded[0] == ("load_checkpoint", first)
    # Named explicitly, it is refused rather than loaded unverified.
    trainer, loaded = _trainer(root, load_path=newest)
    with pytest.raises(checkpoint.CheckpointError, match=f"load_checkpoint_path={newest} is damaged: .*manifest.json is missing"):
        _resume(trainer)
    assert loaded == []


def _damage_all(root: str) -> list[str]:
    paths = [_save(root, 1), _save(root, 2)]
    for path in paths:
        with open(os.path.join(path, "actor", "model_world_size_1_rank_0.pt"), "r+b") as f:
            f.truncate(100)
    return paths


def test_every_checkpoint_damaged_is_an_error_naming_them(tmp_path, capfd):
    root = str(tmp_path)
    paths = _damage_all(root)
    trainer, loaded = _trainer(root)
    with pytest.raises(checkpoint.CheckpointError) as error:
        _resume(trainer)
    message = str(error.value)
    assert message.startswith(f"every checkpoint under {root} is damaged:")
    for path in paths:
        assert f"checkpoint {path} is damaged, skipped: {path}/actor/model_world_size_1_rank_0.pt has 100 bytes" in message
    assert "trainer.start_fresh_if_all_damaged=true" in message
    assert loaded == [] and trainer.global_step == 0 and checkpoint.list_checkpoints(root) == [1, 2]
    assert "damaged" not in "".join(capfd.readouterr())  # the error says it; nothing printed besides


def test_start_fresh_if_all_damaged_keeps_them_aside(tmp_path, capsys):
    root = str(tmp_path)
    paths = _damage_all(root)
    config = PPOConfig()
    config.trainer.start_fresh_if_all_damaged = True
    trainer, loaded = _trainer(root, config=config)
    _resume(trainer)
    output = capsys.readouterr().out
    assert f"every checkpoint under {root} is damaged; starting from step 0" in output
    assert output.count("has 100 bytes") == 2  # each reason once
    assert loaded == [] and trainer.global_step == 0 and checkpoint.list_checkpoints(root) == []
    assert all(os.path.isdir(path + ".damaged") for path in paths)  # a fresh start cannot overwrite them
    assert not os.path.exists(os.path.join(root, checkpoint.LATEST_FILE))


def test_a_refused_settings_change_stops_before_anything_is_loaded(tmp_path, capsys):
    root = str(tmp_path)
    path = _save(root, 2)
    config = PPOConfig()
    config.data.seed = 5
    trainer, loaded = _trainer(root, config=config)
    with pytest.raises(checkpoint.CheckpointError, match=r"data.seed: 1 -> 5 breaks the data position"):
        _resume(trainer)
    assert loaded == [] and trainer.global_step == 0
    # Accepted, the saved position (offset 2) continues in the new seed's row order.
    config.trainer.resume_allow_changes = ["data.seed"]
    trainer, loaded = _trainer(root, config=config)
    _resume(trainer)
    assert "resume changes data.seed: 1 -> 5 (breaks the data position; allowed" in capsys.readouterr().out
    assert loaded == [("load_checkpoint", path), ("dataloader", {"epoch": 0, "offset": 2, "seed": 5, "shuffle": True})]
