"""The one-step-off stream's bookkeeping (verl/trainer/one_step_off.py), driven by hand with a
recording stand-in for the engine group (the real group runs in test_one_step_off_e2e.py): which
weights each batch is generated from, when the engines load new ones, and validation mid-stream."""

import threading

import pytest

from verl.trainer.one_step_off import OneStepOffStream


class RecordingEngines:
    def __init__(self):
        self.loads: list[int] = []
        self.version = None

    def load_weights(self, ref, version):
        self.loads.append(version)
        self.version = version
        return [{"bytes": 8.0, "version": float(version)}]


def make_stream():
    engines = RecordingEngines()
    actor_version = {"v": 0}
    generated: list[tuple[int, int]] = []  # (step, engine version while generating it)
    release = threading.Event()

    def produce(step):
        release.wait(5)
        generated.append((step, engines.version))
        return f"batch {step}"

    stream = OneStepOffStream(engines, produce, lambda: f"ref v{actor_version['v']}")
    return stream, engines, actor_version, generated, release


def train(stream, actor_version, step):
    """What the trainer does around a step: take the batch, advance the engines to the next one, update."""
    batch, weights, _ = stream.take()
    stream.advance({"batches_taken": step}, step + 1)
    assert stream.dataloader_state == {"batches_taken": step}
    actor_version["v"] = step
    stream.publish(step)
    return batch, weights.version


def test_each_batch_after_the_first_comes_from_the_weights_one_update_old():
    stream, engines, actor_version, generated, release = make_stream()
    release.set()
    assert stream.start(0, None).endswith("(update 0)")
    stream.submit(1)
    versions = [train(stream, actor_version, step)[1] for step in range(1, 5)]
    assert versions == [0, 0, 1, 2]  # trained at updates 0, 1, 2, 3: staleness 0, 1, 1, 1
    assert engines.loads == [0, 1, 2, 3]  # version 0 at the start; never a version twice
    stream.take()
    assert generated == [(1, 0), (2, 0), (3, 1), (4, 2), (5, 3)]


def test_the_last_step_submits_no_batch_but_records_what_a_checkpoint_holds():
    stream, engines, _, _, release = make_stream()
    release.set()
    stream.start(0, None)
    stream.submit(1)
    stream.take()
    stream.publish(1)
    assert stream.advance({"batches_taken": 1}, None) == {"perf/sync_bytes": 8.0}
    assert stream.in_flight is None and stream.next_batch_weights.version == 1 and engines.version == 1


def test_validation_waits_for_the_batch_in_flight_and_loads_the_newest_weights_before_the_next():
    stream, engines, actor_version, generated, release = make_stream()
    release.set()
    stream.start(0, None)
    stream.submit(1)
    train(stream, actor_version, 1)  # batch 2 in flight on v0, v1 published
    stream.drain()
    stream.load_pending()  # validation sees v1
    assert engines.version == 1 and stream.next_batch_weights.version == 0  # a checkpoint now saves v0 for batch 2
    batch, version = train(stream, actor_version, 2)
    assert (batch, version) == ("batch 2", 0) and engines.loads == [0, 1]  # v1 not loaded twice
    stream.take()
    assert generated[-1] == (3, 1)


def test_weights_cannot_change_under_a_batch_being_generated():
    stream, _, _, _, release = make_stream()
    stream.start(0, None)
    stream.submit(1)
    stream.publish(1)
    with pytest.raises(RuntimeError, match="while a batch is being generated"):
        stream.load_pending()
    release.set()
    stream.take()
