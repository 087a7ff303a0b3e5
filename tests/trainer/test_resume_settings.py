"""verl.trainer.resume_settings: a checkpoint records the settings that shape the run; a resume
prints one line per change and refuses changes that break the data position or the lr schedule
unless trainer.resume_allow_changes lists them."""

import pytest

from verl.trainer.config import ConfigError, PPOConfig
from verl.trainer.resume_settings import SETTINGS_FILE, check_resume, run_settings, write_run_settings
from verl.utils.checkpoint import CheckpointError

STEPS = 40  # the lr schedule's length in optimizer steps


def _checkpoint(tmp_path, config: PPOConfig, steps: int = STEPS) -> str:
    write_run_settings(str(tmp_path), run_settings(config, steps))
    return str(tmp_path)


def test_unchanged_settings_resume_silently(tmp_path, capsys):
    path = _checkpoint(tmp_path, PPOConfig())
    assert check_resume(path, run_settings(PPOConfig(), STEPS), PPOConfig()) == []
    assert capsys.readouterr().out == ""


def test_each_change_that_applies_cleanly_prints_one_line(tmp_path, capsys):
    path = _checkpoint(tmp_path, PPOConfig())
    now = PPOConfig()
    now.worker.rollout.n, now.worker.actor.optim.lr, now.trainer.seed = 4, 3e-6, 7
    changes = check_resume(path, run_settings(now, STEPS), now)
    assert [c.key for c in changes] == ["worker.actor.optim.lr", "worker.rollout.n", "trainer.seed"]
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "resume changes worker.actor.optim.lr: 1e-06 -> 3e-06 (applies from the resumed step on)",
        f"resume changes worker.rollout.n: {PPOConfig().worker.rollout.n} -> 4 (applies from the resumed step on)",
        "resume changes trainer.seed: 1 -> 7 (applies from the resumed step on)",
    ]


def test_a_change_that_breaks_the_data_position_is_refused_naming_the_key_to_allow(tmp_path, capsys):
    saved = PPOConfig()
    saved.data.train_files = "a.parquet"
    path = _checkpoint(tmp_path, saved)
    now = PPOConfig()
    now.data.train_files, now.data.rollout_batch_size, now.worker.rollout.n = "b.parquet", 4, 2
    with pytest.raises(CheckpointError) as error:
        check_resume(path, run_settings(now, STEPS), now)
    message = str(error.value)
    assert f"resume from {path} refused: data.train_files: 'a.parquet' -> 'b.parquet' breaks the data position" in message
    assert f"data.rollout_batch_size: {saved.data.rollout_batch_size} -> 4 breaks the data position" in message
    assert "trainer.resume_allow_changes=[data.train_files,data.rollout_batch_size]" in message
    assert "worker.rollout.n" not in message  # a clean change: printed, not refused
    assert capsys.readouterr().out.splitlines() == [
        f"resume changes worker.rollout.n: {saved.worker.rollout.n} -> 2 (applies from the resumed step on)"
    ]
    now.trainer.resume_allow_changes = ["data.train_files", "data.rollout_batch_size"]
    check_resume(path, run_settings(now, STEPS), now)
    assert "resume changes data.train_files: 'a.parquet' -> 'b.parquet' (breaks the data position; allowed by " \
        "trainer.resume_allow_changes)" in capsys.readouterr().out


def test_a_longer_run_breaks_a_cosine_schedule_but_not_a_constant_one(tmp_path, capsys):
    constant = PPOConfig()
    constant.trainer.max_steps = 4
    path = _checkpoint(tmp_path, constant)
    longer = PPOConfig()
    longer.trainer.max_steps = 8
    check_resume(path, run_settings(longer, 2 * STEPS), longer)
    assert "resume changes trainer.max_steps: 4 -> 8 (applies from the resumed step on)" in capsys.readouterr().out

    constant.worker.actor.optim.lr_scheduler = longer.worker.actor.optim.lr_scheduler = "cosine"
    path = _checkpoint(tmp_path, constant)
    with pytest.raises(CheckpointError, match=r"trainer.max_steps: 4 -> 8 breaks the lr schedule \(it spans 40 -> 80 optimizer steps\)"):
        check_resume(path, run_settings(longer, 2 * STEPS), longer)
    longer.worker.actor.optim.lr_scheduler = "constant"  # the schedule kind itself changed
    with pytest.raises(CheckpointError, match=r"worker.actor.optim.lr_scheduler: 'cosine' -> 'constant' breaks the lr schedule"):
        check_resume(path, run_settings(longer, STEPS), longer)


def test_a_checkpoint_without_recorded_settings_says_nothing_was_checked(tmp_path, capsys):
    assert check_resume(str(tmp_path), run_settings(PPOConfig(), STEPS), PPOConfig()) == []
    assert f"records no {SETTINGS_FILE}" in capsys.readouterr().out


def test_resume_allow_changes_names_only_recorded_settings():
    config = PPOConfig()
    config.worker.actor.model.model_path, config.data.train_files = "model", "train.parquet"
    config.trainer.resume_allow_changes = ["data.sed"]
    with pytest.raises(ConfigError, match=r"trainer.resume_allow_changes=\['data.sed'\]: not settings a checkpoint records; those are data.train_files, data.seed"):
        config.validate()
