"""The one-step-off cost model (benchmarks/async_rollout.py::predict_speedup): pure arithmetic."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))

from async_rollout import predict_speedup  # noqa: E402


def test_linear_scaling_without_overheads_gains_nothing_from_splitting_the_gpus():
    # Generation 2 s and training 6 s on 8 GPUs: 2 rollout GPUs take 8 s, 6 training GPUs 8 s.
    speedup, rollout_gpus = predict_speedup(2.0, 6.0, 8, decode_scaling=1.0, handoff_s=0.0, colocated_overhead_s=0.0)
    assert speedup == pytest.approx(1.0) and rollout_gpus == 2


def test_sublinear_decode_and_the_colocated_overhead_are_what_one_step_off_wins():
    plain, _ = predict_speedup(2.0, 6.0, 8, decode_scaling=1.0, handoff_s=0.0, colocated_overhead_s=0.0)
    sublinear, _ = predict_speedup(2.0, 6.0, 8, decode_scaling=0.5, handoff_s=0.0, colocated_overhead_s=0.0)
    overhead, _ = predict_speedup(2.0, 6.0, 8, decode_scaling=1.0, handoff_s=0.0, colocated_overhead_s=1.0)
    assert sublinear > plain and overhead == pytest.approx(9.0 / 8.0)


def test_the_hand_off_is_paid_every_step():
    speedup, _ = predict_speedup(2.0, 6.0, 8, decode_scaling=1.0, handoff_s=0.8, colocated_overhead_s=0.0)
    assert speedup == pytest.approx(8.0 / 8.8)
