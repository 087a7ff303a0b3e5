"""DAPO dynamic sampling in the controller (`RayPPOTrainer._sample_with_refill` and
`compute_advantages`), with generation stubbed: running out of tries is an error unless filling
is asked for, filler rows train with advantage exactly 0, and every redraw has its own seed."""

import numpy as np
import pytest
import torch

from verl.protocol import DataProto
from verl.trainer.config import DynamicSamplingConfig, PPOConfig
from verl.trainer.ray_trainer import RayPPOTrainer

N = 2  # responses per prompt


def prompts(name: str) -> DataProto:
    return DataProto.from_dict(tensors={"x": torch.zeros(2, 1)}, non_tensors={"name": np.array([name, name], dtype=object)})


# Per batch of 2 prompts, the scores of its 2 x N responses. Prompt 0 of "first" has no accuracy
# spread but an overall (format) spread: a filler that GRPO on overall would train.
SCORES = {
    "first": {"accuracy": [1.0, 1.0, 0.0, 1.0], "overall": [1.0, 1.1, 0.0, 1.0]},
    "refill": {"accuracy": [0.0, 0.0, 1.0, 1.0], "overall": [0.0, 0.0, 1.0, 1.0]},
}


def trainer_with(**dynamic) -> tuple[RayPPOTrainer, list[int]]:
    trainer = RayPPOTrainer.__new__(RayPPOTrainer)
    trainer.config = PPOConfig()
    trainer.config.worker.rollout.n = N
    trainer.config.algorithm.dynamic_sampling = DynamicSamplingConfig(enable=True, max_tries=2, **dynamic)
    trainer.global_step = 3
    trainer.kl_controller = None
    seeds: list[int] = []

    def sample(batch, timing, step, draw=0):
        seeds.append(trainer.train_sampling(step, draw).seed)
        name = batch.non_tensor_batch["name"][0]
        rollout = DataProto.from_dict(
            tensors={"response_mask": torch.ones(2 * N, 3, dtype=torch.long)},
            non_tensors={"uid": np.array([f"{name}{i // N}" for i in range(2 * N)], dtype=object)},
        )
        return rollout, {key: torch.tensor(values) for key, values in SCORES[name].items()}, None

    trainer._sample = sample
    return trainer, seeds


def test_running_out_of_tries_is_an_error_by_default():
    trainer, _ = trainer_with()
    with pytest.raises(RuntimeError, match=r"step 3: dynamic sampling found 1 of the 2 prompts whose accuracy differs.*"
                                           r"max_tries=2.*fill_after_max_tries=true"):
        trainer._sample_with_refill(prompts("first"), iter([prompts("refill")]), {}, trainer.global_step)


def test_asked_for_fill_gives_the_fillers_exactly_zero_advantage_and_redraws_new_seeds(capsys):
    trainer, seeds = trainer_with(fill_after_max_tries=True)
    rollout, scores, _, drawn, _, metrics = trainer._sample_with_refill(prompts("first"), iter([prompts("refill")]), {}, trainer.global_step)
    assert "1 prompts without spread fill the batch" in capsys.readouterr().out
    assert metrics["dynamic_sampling/filler_prompts"] == 1.0 and len(drawn) == 4 * N
    # Kept: prompt 1 of "first" (spread), then prompt 0 of "first" as the first filler.
    assert list(rollout.non_tensor_batch["uid"]) == ["first0", "first0", "first1", "first1"]
    assert list(rollout.non_tensor_batch["filler"]) == [True, True, False, False]
    advantages, _, _ = trainer.compute_advantages(rollout, scores)
    assert (advantages[:N] == 0).all() and (advantages[N:].abs() > 0.5).all()
    seed = trainer.config.worker.rollout.seed
    assert seeds == [seed + 3000, seed + 3001]


def test_data_running_out_during_refills_ends_the_run_before_the_step():
    from verl.trainer.ray_trainer import DataExhaustedError

    trainer, _ = trainer_with()
    trainer.config.algorithm.dynamic_sampling.max_tries = 4
    with pytest.raises(DataExhaustedError, match="found 1 of the 2 prompts.*and the training data ran out"):
        trainer._sample_with_refill(prompts("first"), iter([prompts("refill")]), {}, trainer.global_step)  # one refill, then no more data
