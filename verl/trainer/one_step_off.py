"""One-step-off asynchronous rollout (trainer.rollout_mode=one_step_off).

The rollout engines are a worker group of their own (`RolloutWorker`s). While the FSDP ranks
train step k, a driver thread generates step k+1's batch on the engines: sampling, the
self-reward's re-answers and the rewards. Step k+1 therefore trains on responses from the weights
before update k (version k-1), one update old; the trainer recomputes their old log-probs, and
the rollout correction (TIS/MIS) covers the gap. After each update the actor publishes its weights
(version k) into Ray's object store; the engines load them once step k+1's batch is complete,
before they start on step k+2's. Per step (k >= 2) the staleness is exactly one update::

    engines:  gen(1, v0)  gen(2, v0)        gen(3, v1)        gen(4, v2)
    trainer:              train(1) -> v1    train(2) -> v2    train(3) -> v3

A checkpoint at step k holds the actor at v_k, the data position after step k's batch, and the
weights v_{k-1} that generate the in-flight batch k+1 (rollout/model.safetensors): a resumed run
regenerates that batch from the same weights with the same seed, so it is neither lost nor
counted twice, and the run continues as if uninterrupted.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from verl.single_controller.worker_group import RayWorkerGroup, on_all_ranks, split_rows
from verl.workers.rollout_worker import RolloutWorker, rollout_weights_path

T = TypeVar("T")


class RolloutWorkerGroup(RayWorkerGroup):
    """The standalone rollout engines as the trainer calls them."""

    init_model = on_all_ranks(RolloutWorker.init_model)
    generate_sequences = split_rows(RolloutWorker.generate_sequences, per_engine=True)
    num_generate_calls = on_all_ranks(RolloutWorker.num_generate_calls)
    load_weights = on_all_ranks(RolloutWorker.load_weights)
    load_weights_file = on_all_ranks(RolloutWorker.load_weights_file)


@dataclass(frozen=True)
class PolicyWeights:
    """Published policy weights: `version` updates trained into them, `ref` where they lie in
    Ray's object store (None: loaded from a checkpoint file, not published this run)."""

    version: int
    ref: Any


class Background(Generic[T]):
    """`fn(*args)` on a daemon thread (a driver that fails or is stopped never waits for it);
    `result()` joins and returns its value or raises its exception."""

    def __init__(self, fn: Callable[..., T], *args: Any):
        self._value: T | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(fn, *args), daemon=True, name="one-step-off-rollout")
        self._thread.start()

    def _run(self, fn: Callable[..., T], *args: Any) -> None:
        try:
            self._value = fn(*args)
        except BaseException as error:  # noqa: BLE001 - re-raised in the caller's thread by result()
            self._error = error

    def result(self) -> T:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]


@dataclass
class InFlight(Generic[T]):
    """A batch being generated from `weights`."""

    weights: PolicyWeights
    job: Background[T]


class OneStepOffStream(Generic[T]):
    """The trainer's side of the overlap: which weights the engines hold, which are published
    but not loaded yet, and the batch in flight.

    `produce(step)` generates step `step`'s batch on the engines (None: the data ran out);
    `publish()` gathers the actor's current weights into the object store."""

    def __init__(
        self,
        engines: RolloutWorkerGroup,
        produce: Callable[[int], T | None],
        publish: Callable[[], Any],
    ):
        self.engines = engines
        self.produce = produce
        self.publish_ref = publish
        self.engine_weights: PolicyWeights | None = None
        self.pending: PolicyWeights | None = None
        self.in_flight: InFlight[T] | None = None
        self.next_batch_weights: PolicyWeights | None = None
        # A finished in-flight batch and its weights, kept through validation (`drain`).
        self.drained: tuple[T | None, PolicyWeights] | None = None
        # At the last step: the data position after its batch and the weights the batch after it
        # is (or would be) generated from, the in-flight part of a checkpoint.
        self.dataloader_state: dict | None = None

    # ---- weights -----------------------------------------------------------------------------
    def publish(self, version: int) -> None:
        """The actor's weights after `version` updates: the engines load them before they start
        on the next batch (`load_pending`)."""
        self.pending = PolicyWeights(version, self.publish_ref())

    def load_pending(self) -> dict[str, float]:
        """Engines take the newest published weights (they must be idle: no batch in flight)."""
        if self.in_flight is not None:
            raise RuntimeError("weights cannot change while a batch is being generated")
        if self.pending is None or (self.engine_weights is not None and self.pending.version == self.engine_weights.version):
            return {}
        loaded = self.engines.load_weights(self.pending.ref, self.pending.version)
        self.engine_weights, self.pending = self.pending, None
        return {"perf/sync_bytes": loaded[0]["bytes"]}

    def start(self, version: int, resumed_from: str | None) -> str:
        """Brings the engines to the run's state: the actor's weights (`version` updates) for a
        fresh start; after a resume, the weights that generated the checkpoint's in-flight batch
        (its rollout/ file), with the actor's own published for the batch after. Returns a line
        saying which."""
        if resumed_from is not None and os.path.isfile(rollout_weights_path(resumed_from)):
            saved = self.engines.load_weights_file(resumed_from)[0]
            self.engine_weights = PolicyWeights(saved, None)
            self.publish(version)
            return (f"one-step-off rollout: engines resume on the weights of update {saved} (the in-flight batch's), "
                    f"the actor's update {version} follows")
        self.publish(version)
        self.load_pending()
        if resumed_from is not None:
            return (f"one-step-off rollout: checkpoint {resumed_from} has no rollout/ weights (saved colocated?); "
                    f"step {version + 1}'s batch is generated from the actor's own weights (update {version})")
        return f"one-step-off rollout: engines on the actor's weights (update {version})"

    def in_flight_weights_to_save(self) -> dict:
        """The weights the next batch is generated from, as `FSDPWorker.save_checkpoint` takes
        them (rank 0 writes them from its object store; the driver never holds the tensors)."""
        weights = self.next_batch_weights
        if weights is None or weights.ref is None:
            raise RuntimeError("no published weights for the in-flight batch to save")
        return {"rollout_weights": [weights.ref], "rollout_version": weights.version}

    # ---- batches -----------------------------------------------------------------------------
    def submit(self, step: int) -> None:
        """Starts generating step `step`'s batch on the engines' current weights."""
        if self.engine_weights is None:
            raise RuntimeError("start() the stream before submitting batches")
        self.in_flight = InFlight(self.engine_weights, Background(self.produce, step))

    def advance(self, dataloader_state: dict, next_step: int | None) -> dict[str, float]:
        """Between taking a batch and training on it: the engines load the newest weights, the
        stream records what a checkpoint of this step holds in flight (`dataloader_state`, the
        data position after the taken batch, and the engines' weights), then the engines start
        on step `next_step` (None: the run ends after this step). Returns the sync metrics."""
        sync_metrics = self.load_pending()
        self.next_batch_weights = self.engine_weights
        self.dataloader_state = dataloader_state
        if next_step is not None:
            self.submit(next_step)
        return sync_metrics

    def take(self) -> tuple[T | None, PolicyWeights, float]:
        """The in-flight batch (None: the data ran out), the weights it came from and the seconds
        the trainer waited for it (0 when `drain` already waited)."""
        if self.drained is not None:
            (batch, weights), self.drained = self.drained, None
            return batch, weights, 0.0
        start = time.perf_counter()
        batch, weights = self._join()
        return batch, weights, time.perf_counter() - start

    def drain(self) -> None:
        """Waits for the in-flight batch and keeps it for `take`, leaving the engines idle (for
        validation on the newest weights)."""
        if self.in_flight is not None:
            self.drained = self._join()

    def _join(self) -> tuple[T | None, PolicyWeights]:
        if self.in_flight is None:
            raise RuntimeError("no batch in flight")
        in_flight, self.in_flight = self.in_flight, None
        return in_flight.job.result(), in_flight.weights
