"""Ray worker groups: start one actor per rank, broadcast calls, split a batch across ranks and
gather the results. The trainer calls these; it never talks to an actor directly.

A group class names the worker methods it calls as typed attributes, each bound with its dispatch
mode (`on_all_ranks`, `split_rows`, `split_each`)::

    class HybridWorkerGroup(RayWorkerGroup):
        compute_log_probs = split_rows(FSDPWorker.compute_log_probs)

`group.compute_log_probs(batch)` then has the worker method's signature (its first argument, the
batch, split over the ranks), go-to-definition leads to the worker, a misspelt worker method fails
when the class is defined (at import), and a group built for a worker class that lacks a bound
method fails at construction.
"""

from __future__ import annotations

import functools
import inspect
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Concatenate, Generic, ParamSpec, TypeVar

import ray
from ray.exceptions import RayActorError, RayTaskError

from verl.protocol import DataProto, pad_to_divisor, unpad

logger = logging.getLogger(__name__)


# How long a failed call waits for the other ranks' outcome, to tell a dead rank (the cause) from
# its peers' collective errors (the effect); Ray reports a dead worker process within a second or two.
DEAD_PEER_GRACE_S = 10.0


class WorkerDiedError(RuntimeError):
    """A Ray worker died or raised; the message names the rank and the method."""


class WorkerTimeoutError(WorkerDiedError):
    """A call did not finish on some ranks within the group's time limit; names them and the method."""


@dataclass
class ResourcePool:
    """Where the ranks run: `nnodes` x `procs_per_node` processes, each holding `gpus_per_proc`
    GPUs (0 on CPU) and `cpus_per_proc` CPUs."""

    nnodes: int
    procs_per_node: int
    gpus_per_proc: float
    cpus_per_proc: float

    @property
    def world_size(self) -> int:
        return self.nnodes * self.procs_per_node

    @property
    def per_proc(self) -> dict[str, float]:
        """What one process holds, by Ray resource name (no GPU key on CPU)."""
        return {"CPU": self.cpus_per_proc, **({"GPU": self.gpus_per_proc} if self.gpus_per_proc > 0 else {})}

    def demand(self) -> dict[str, float]:
        """What all the ranks hold together, by Ray resource name."""
        return {resource: amount * self.world_size for resource, amount in self.per_proc.items()}


def check_nodes_fit(node_bundle: dict[str, float], nnodes: int) -> None:
    """Raises ValueError unless `nnodes` alive Ray nodes can each hold `node_bundle` (one node's
    ranks): the placement group spreads them one node each, and one that cannot be placed would
    wait forever."""
    alive = [node for node in ray.nodes() if node["Alive"]]
    fitting = [
        node for node in alive
        if all(node["Resources"].get(resource, 0) >= amount for resource, amount in node_bundle.items())
    ]
    if len(fitting) < nnodes:
        def has(node: dict) -> str:
            return ", ".join(f"{node['Resources'].get(resource, 0):g} {resource}" for resource in node_bundle)

        seen = "; ".join(f"{node['NodeManagerAddress']} ({has(node)})" for node in alive)
        raise ValueError(
            f"trainer.nnodes={nnodes} needs {nnodes} Ray nodes with {node_bundle} each (trainer.n_gpus_per_node "
            f"workers per node); the cluster has {len(fitting)} such node(s) of {len(alive)}: {seen}"
        )


P = ParamSpec("P")
R = TypeVar("R")


class GroupMethod(Generic[P, R]):
    """A worker method bound to a worker-group class attribute of the same name: on a group it runs
    the method on the ranks as `dispatch(group, name, *args, **kwargs)` does, and has the method's
    signature (without `self`) and return type after dispatch."""

    def __init__(self, method: Callable[..., Any], dispatch: Callable[..., Any], mode: str):
        self.method = method
        self.dispatch = dispatch
        self.mode = mode
        self.__doc__ = method.__doc__
        signature = inspect.signature(method)
        self.signature = signature.replace(parameters=list(signature.parameters.values())[1:])  # without self

    def __set_name__(self, owner: type, name: str) -> None:
        if name != self.method.__name__:
            raise TypeError(
                f"{owner.__name__}.{name} is bound to {self.method.__qualname__}: a group attribute must carry "
                "the worker method's own name"
            )

    def __get__(self, group: RayWorkerGroup | None, owner: type | None = None) -> Callable[P, R]:
        if group is None:
            return self  # type: ignore[return-value]  # the binding itself, read on the class
        name, dispatch = self.method.__name__, self.dispatch

        @functools.wraps(self.method)
        def call(*args: Any, **kwargs: Any) -> Any:
            return dispatch(group, name, *args, **kwargs)

        call.__signature__ = self.signature  # type: ignore[attr-defined]  # what help() and IDEs show
        return call


def on_all_ranks(method: Callable[Concatenate[Any, P], R]) -> GroupMethod[P, list[R]]:
    """Every rank runs `method` with the same arguments; the call returns each rank's result in
    rank order."""
    return GroupMethod(method, RayWorkerGroup.execute_all, "all ranks")


def split_rows(
    method: Callable[Concatenate[Any, DataProto, P], DataProto], per_engine: bool = False
) -> GroupMethod[Concatenate[DataProto, P], DataProto]:
    """The batch (the first argument) is split evenly over the ranks, or with `per_engine` over the
    rollout engines (every rank of a tensor-parallel engine gets its engine's chunk); the returned
    rows come back concatenated in batch order, padding dropped."""
    dispatch = RayWorkerGroup.dispatch_per_engine if per_engine else RayWorkerGroup.dispatch
    return GroupMethod(method, dispatch, "split rows per engine" if per_engine else "split rows")


def split_each(method: Callable[Concatenate[Any, DataProto, P], R]) -> GroupMethod[Concatenate[DataProto, P], list[R]]:
    """The batch (the first argument) is split evenly over the ranks; the call returns each rank's
    result (not rows: e.g. an update's metrics) in rank order."""
    return GroupMethod(method, lambda group, name, data, *args, **kwargs: group.dispatch_each(name, data, *args, **kwargs)[0],
                       "split, each rank's result")


def group_methods(group_cls: type) -> dict[str, GroupMethod]:
    """The worker methods a group class binds, by name."""
    return {name: value for klass in reversed(group_cls.__mro__) for name, value in vars(klass).items()
            if isinstance(value, GroupMethod)}


class RayWorkerGroup:
    """One Ray actor per rank of `worker_cls` (a plain class; it is wrapped with `ray.remote`).
    A placement group holds one bundle per node (STRICT_SPREAD: each on a different Ray node),
    and rank r runs in bundle r // procs_per_node, so consecutive ranks share a node, as
    torch.distributed expects; `rank_node_ids` says which node each rank got.

    Results are taken rank by rank as they arrive: the first rank that dies or raises fails the
    call at once, naming it (a rank that only raised because its collective peer died is reported
    as that peer's death), and a call still running after `call_timeout_s` fails naming the ranks
    that have not finished - a stuck rank (a hung kernel, a collective whose peer hangs) otherwise
    blocks the driver forever.

    `ranks_per_engine` ranks share one rollout engine (tensor parallelism): `split_rows(...,
    per_engine=True)` methods give each of them the same chunk. With `distributed` the ranks form
    one torch.distributed group (the worker class provides `master_address` and
    `init_distributed`); without it they are independent processes (rollout engines)."""

    def __init__(
        self, worker_cls: type, pool: ResourcePool, *init_args: Any, call_timeout_s: float | None = None,
        ranks_per_engine: int = 1, distributed: bool = True, **init_kwargs: Any,
    ):
        for name, bound in group_methods(type(self)).items():
            if getattr(worker_cls, name, None) is not bound.method:
                raise TypeError(
                    f"{type(self).__name__}.{name} calls {bound.method.__qualname__}, which {worker_cls.__name__} "
                    f"does not have as its {name!r}"
                )
        if pool.world_size % ranks_per_engine != 0:
            raise ValueError(f"{ranks_per_engine} ranks per engine do not divide world size {pool.world_size}")
        self.pool = pool
        self.call_timeout_s = call_timeout_s
        self.ranks_per_engine = ranks_per_engine
        available = ray.cluster_resources()
        for resource, needed in pool.demand().items():
            if needed > available.get(resource, 0):
                raise ValueError(
                    f"{pool.world_size} workers x {pool.per_proc[resource]:g} {resource} do not fit the Ray cluster's "
                    f"{available.get(resource, 0):g} {resource} (trainer.nnodes x trainer.n_gpus_per_node, "
                    "trainer.ray_num_cpus); a placement that cannot happen would wait forever"
                )
        node_bundle = {resource: amount * pool.procs_per_node for resource, amount in pool.per_proc.items()}
        check_nodes_fit(node_bundle, pool.nnodes)
        self.placement_group = ray.util.placement_group([node_bundle] * pool.nnodes, strategy="STRICT_SPREAD")
        try:
            ray.get(self.placement_group.ready(), timeout=call_timeout_s)
        except ray.exceptions.GetTimeoutError:
            raise WorkerTimeoutError(
                f"Ray placed no {pool.nnodes} node(s) x {node_bundle} within {call_timeout_s:g} s "
                f"(trainer.worker_timeout_s); cluster resources: {available}"
            ) from None
        bundle_nodes = ray.util.placement_group_table(self.placement_group)["bundles_to_node_id"]
        self.rank_node_ids: list[str] = [bundle_nodes[self.bundle_of(rank)] for rank in range(pool.world_size)]
        remote_cls = ray.remote(worker_cls)
        self.workers = []
        for rank in range(pool.world_size):
            strategy = ray.util.scheduling_strategies.PlacementGroupSchedulingStrategy(
                placement_group=self.placement_group, placement_group_bundle_index=self.bundle_of(rank)
            )
            env = {
                "RANK": str(rank),
                "WORLD_SIZE": str(pool.world_size),
                "LOCAL_RANK": "0" if pool.gpus_per_proc > 0 else str(rank % pool.procs_per_node),
            }
            worker = remote_cls.options(
                num_cpus=pool.cpus_per_proc,
                num_gpus=pool.gpus_per_proc,
                scheduling_strategy=strategy,
                runtime_env={"env_vars": env},
            ).remote(*init_args, **init_kwargs)
            self.workers.append(worker)
        if distributed:  # rank 0 hosts the torch.distributed rendezvous on its own node
            master_addr, master_port = self._gather("master_address", [self.workers[0].master_address.remote()])[0]
            self.execute_all("init_distributed", master_addr, master_port)

    @property
    def world_size(self) -> int:
        return len(self.workers)

    def bundle_of(self, rank: int) -> int:
        """The placement-group bundle, i.e. the node, rank `rank` runs in."""
        return rank // self.pool.procs_per_node

    def run_on_each_node(self, fn: Callable[..., Any], *args: Any) -> list:
        """`fn(*args)` as a zero-CPU Ray task inside each node's bundle (next to that node's ranks,
        seeing what they see); returns the results in node (bundle) order, within the group's
        time limit."""
        task = ray.remote(num_cpus=0)(fn)
        refs = [
            task.options(
                scheduling_strategy=ray.util.scheduling_strategies.PlacementGroupSchedulingStrategy(
                    placement_group=self.placement_group, placement_group_bundle_index=node
                )
            ).remote(*args)
            for node in range(self.pool.nnodes)
        ]
        try:
            return ray.get(refs, timeout=self.call_timeout_s)
        except ray.exceptions.GetTimeoutError:
            raise WorkerTimeoutError(
                f"'{getattr(fn, '__name__', fn)}' did not finish on every node within {self.call_timeout_s:g} s "
                "(trainer.worker_timeout_s)"
            ) from None

    def _gather(self, method: str, refs: list) -> list:
        rank_of = {ref: rank for rank, ref in enumerate(refs)}
        deadline = None if self.call_timeout_s is None else time.monotonic() + self.call_timeout_s
        pending = list(refs)
        while pending:
            wait_s = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, pending = ray.wait(pending, num_returns=1, timeout=wait_s)
            if not ready:
                late = sorted(rank_of[ref] for ref in pending)
                raise WorkerTimeoutError(
                    f"worker rank(s) {late} did not finish '{method}' within {self.call_timeout_s:g} s "
                    f"(trainer.worker_timeout_s); {len(refs) - len(late)} of {len(refs)} ranks finished"
                )
            for ref in ready:
                try:
                    ray.get(ref)
                except RayActorError as error:
                    raise WorkerDiedError(f"worker rank {rank_of[ref]} died during '{method}': {error}") from error
                except RayTaskError as error:
                    dead = self._dead_rank(pending, rank_of)
                    if dead is not None:  # this rank only lost its collective peer: name the cause
                        raise WorkerDiedError(
                            f"worker rank {dead[0]} died during '{method}': {dead[1]}\n(rank {rank_of[ref]} then "
                            f"raised: {str(error).splitlines()[-1]})"
                        ) from error
                    raise WorkerDiedError(f"worker rank {rank_of[ref]} raised in '{method}':\n{error}") from error
        return ray.get(refs)

    @staticmethod
    def _dead_rank(pending: list, rank_of: dict, grace_s: float = DEAD_PEER_GRACE_S) -> tuple[int, Exception] | None:
        """A rank among `pending` whose process died, waiting up to `grace_s` for its death to be
        reported: when one rank dies in a collective, its peers raise a connection error at about
        the same moment, and the dead one is the culprit to name."""
        ready, _ = ray.wait(pending, num_returns=len(pending), timeout=grace_s) if pending else ([], [])
        for ref in ready:
            try:
                ray.get(ref)
            except RayActorError as error:
                return rank_of[ref], error
            except Exception:  # noqa: BLE001 - another rank's own error or result: not a death
                continue
        return None

    def execute_all(self, method: str, *args: Any, **kwargs: Any) -> list:
        """Calls `method` on every rank with the same arguments; returns each rank's result."""
        refs = [getattr(worker, method).remote(*args, **kwargs) for worker in self.workers]
        return self._gather(method, refs)

    def dispatch_each(
        self, method: str, data: DataProto, *args: Any, group_size: int = 1, **kwargs: Any
    ) -> tuple[list, int]:
        """Splits `data` evenly across groups of `group_size` consecutive ranks (padding with
        repeated leading rows), sends each group's chunk to every rank of the group (tensor
        parallel engines need identical inputs on all their ranks), calls `method`; returns the
        result of each group's first rank and the number of padding rows added."""
        if self.world_size % group_size != 0:
            raise ValueError(f"group size {group_size} does not divide world size {self.world_size}")
        groups = self.world_size // group_size
        padded, pad_size = pad_to_divisor(data, groups)
        chunks = padded.chunk(groups)
        refs = [
            getattr(worker, method).remote(chunks[rank // group_size], *args, **kwargs)
            for rank, worker in enumerate(self.workers)
        ]
        results = self._gather(method, refs)
        return results[::group_size], pad_size

    def dispatch(self, method: str, data: DataProto, *args: Any, group_size: int = 1, **kwargs: Any) -> DataProto:
        """`dispatch_each` for methods returning rows: concatenates results in group order and
        drops the padding. Each input row may yield several output rows (n responses per prompt),
        the same number for every row."""
        results, pad_size = self.dispatch_each(method, data, *args, group_size=group_size, **kwargs)
        rows = DataProto.concat(results)
        padded_rows = len(data) + pad_size
        if len(rows) % padded_rows != 0:
            raise ValueError(f"'{method}' returned {len(rows)} rows for {padded_rows} input rows: not a whole number each")
        return unpad(rows, pad_size * (len(rows) // padded_rows))

    def dispatch_per_engine(self, method: str, data: DataProto, *args: Any, **kwargs: Any) -> DataProto:
        """`dispatch` over the rollout engines: the ranks of one engine get the same chunk."""
        return self.dispatch(method, data, *args, group_size=self.ranks_per_engine, **kwargs)

    def shutdown(self) -> None:
        for worker in self.workers:
            ray.kill(worker)
        ray.util.remove_placement_group(self.placement_group)
