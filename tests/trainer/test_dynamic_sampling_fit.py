"""The training loop when DAPO's refills use up the data before trainer.max_steps: it stops with a
message and still checkpoints its last step (the loop alone, with the stages stubbed)."""

from verl.trainer.config import PPOConfig
from verl.trainer.ray_trainer import RayPPOTrainer
from verl.utils.timeline import Timeline


class RecordingTracker:
    def __init__(self):
        self.steps = []

    def log(self, metrics, step):
        self.steps.append(step)

    def close(self):
        pass


def test_dapo_refills_exhausting_the_data_stop_the_loop_and_save_the_last_step(capsys, tmp_path):
    trainer = RayPPOTrainer.__new__(RayPPOTrainer)
    trainer.config = PPOConfig()
    trainer.config.trainer.save_freq = -1  # only at the end
    trainer.config.trainer.val_before_train = False
    trainer.global_step, trainer.total_steps = 0, 10
    trainer.val_dataloader = None
    trainer.tracker = RecordingTracker()
    trainer.timeline = Timeline(str(tmp_path))
    trainer.maybe_resume = lambda: None
    trainer.stream = None  # colocated
    trainer._batches = lambda: iter(["b1", "b2", "b3"])
    consumed, saved = [], []

    def step(batch, refills):  # each step draws one refill batch from the iterator fit passes, as dynamic sampling does
        consumed.append([batch, next(refills, None)])
        return {"train/reward/overall": 0.0, "perf/tokens_per_s": 0.0}

    trainer.step = step
    trainer.save_checkpoint = lambda: saved.append(trainer.global_step)
    trainer.fit()
    assert consumed == [["b1", "b2"], ["b3", None]]
    assert trainer.tracker.steps == [1, 2] and saved == [2]
    assert "training data exhausted after step 2" in capsys.readouterr().out


def test_a_step_whose_refills_exhaust_the_data_is_dropped_and_the_last_full_step_saved(capsys, tmp_path):
    from verl.trainer.ray_trainer import DataExhaustedError

    trainer = RayPPOTrainer.__new__(RayPPOTrainer)
    trainer.config = PPOConfig()
    trainer.timeline = Timeline(str(tmp_path))
    trainer.config.trainer.save_freq = -1
    trainer.config.trainer.val_before_train = False
    trainer.global_step, trainer.total_steps = 0, 10
    trainer.val_dataloader = None
    trainer.tracker = RecordingTracker()
    trainer.maybe_resume = lambda: None
    trainer.stream = None  # colocated
    trainer._batches = lambda: iter(["b1", "b2"])
    saved = []

    def step(batch, refills):
        if batch == "b2":
            raise DataExhaustedError("step 2: dynamic sampling found 3 of the 8 prompts ..., and the training data ran out")
        return {"train/reward/overall": 0.0, "perf/tokens_per_s": 0.0}

    trainer.step = step
    trainer.save_checkpoint = lambda: saved.append(trainer.global_step)
    trainer.fit()
    assert trainer.tracker.steps == [1] and saved == [1] and trainer.global_step == 1
    out = capsys.readouterr().out
    assert "training data ran out; the step is dropped" in out and "training data exhausted after step 1" in out
