"""RayPPOTrainer.maybe_resume on checkpoints on disk (workers and dataloader stubbed): a damaged
newest checkpoint is skipped with a warning naming the file, rows logged after the one resumed
from are superseded, and an explicitly named damaged checkpoint is an error."""

import json
import os
from types import SimpleNamespace

import pytest
import torch

from verl.trainer.ray_trainer import RayPPOTrainer
from verl.utils import checkpoint
from verl.utils.manifest import write_manifest
from verl.utils.tracking import Tracker


def _save(root: str, step: int) -> str:
    tmp = checkpoint.temporary_step_dir(root, step)
    os.makedirs(os.path.join(tmp, "actor"))
    torch.save({"w": torch.arange(256.0)}, os.path.join(tmp, "actor", "model_world_size_1_rank_0.pt"))
    torch.save({"epoch": 0, "offset": step}, os.path.join(tmp, "dataloader.pt"))
    write_manifest(tmp)
    return checkpoint.commit_checkpoint(root, step, tmp, save_limit=-1)


def _trainer(root: str, load_path: str | None = None):
    loaded = []
    tracker = Tracker(["file"], "p", "e", root, {})
    for step in range(5):
        tracker.log({"x": float(step)}, step=step)
    trainer = SimpleNamespace(
        config=SimpleNamespace(trainer=SimpleNamespace(load_checkpoint_path=load_path, find_last_checkpoint=True)),
        checkpoint_root=root,
        tracker=tracker,
        global_step=0,
        workers=SimpleNamespace(execute_all=lambda method, path: loaded.append((method, path))),
        train_dataloader=SimpleNamespace(load_state_dict=lambda state: loaded.append(("dataloader", state))),
    )
    return trainer, loaded


def test_a_truncated_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, capsys):
    root = str(tmp_path)
    first = _save(root, 3)
    newest = _save(root, 4)
    shard = os.path.join(newest, "actor", "model_world_size_1_rank_0.pt")
    with open(shard, "r+b") as f:
        f.truncate(200)
    trainer, loaded = _trainer(root)
    RayPPOTrainer.maybe_resume(trainer)
    trainer.tracker.close()
    output = capsys.readouterr().out
    assert f"checkpoint {newest} is damaged, skipped: {shard} has 200 bytes" in output
    assert f"resumed from {first} (step 3)" in output
    assert trainer.global_step == 3 and loaded == [("load_checkpoint", first), ("dataloader", {"epoch": 0, "offset": 3})]
    steps = [json.loads(line)["step"] for line in open(tmp_path / "metrics.jsonl")]
    assert steps == [0, 1, 2, 3]  # step 4 will be trained and logged again, once


def test_an_explicitly_named_damaged_checkpoint_is_an_error(tmp_path):
    root = str(tmp_path)
    path = _save(root, 2)
    os.remove(os.path.join(path, "dataloader.pt"))
    trainer, loaded = _trainer(root, load_path=path)
    with pytest.raises(ValueError, match=rf"trainer.load_checkpoint_path={path} is damaged: .*dataloader.pt is missing"):
        RayPPOTrainer.maybe_resume(trainer)
    trainer.tracker.close()
    assert loaded == []
