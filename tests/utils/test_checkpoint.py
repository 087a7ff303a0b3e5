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
