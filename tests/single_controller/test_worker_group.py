"""RayWorkerGroup on a real local Ray cluster with a dummy worker class: typed worker calls
(bound at import, checked at construction, rows split and gathered), and the failure paths: a
rank that dies while the others block, a call that outlives the time limit, an impossible
placement."""

import os
import time

import pytest
import ray
import torch

from verl.protocol import DataProto
from verl.single_controller.worker_group import (
    RayWorkerGroup, ResourcePool, WorkerDiedError, WorkerTimeoutError, on_all_ranks, split_each, split_rows,
)


class SleepyWorker:
    def __init__(self):
        self.rank = int(os.environ["RANK"])

    def master_address(self):
        return "127.0.0.1", 0

    def init_distributed(self, addr, port):
        return None

    def hang_unless_rank(self, rank: int, action: str):
        """Rank `rank` dies or returns; every other rank blocks, as ranks in a collective do."""
        if self.rank == rank:
            if action == "die":
                os._exit(1)
            return self.rank
        time.sleep(600)

    def rows_times(self, data: DataProto, copies: int) -> DataProto:
        """Each row `copies` times in a row, tagged with this rank (as generation yields n rows per prompt)."""
        x = data.batch["x"].repeat_interleave(copies)
        return DataProto.from_dict(tensors={"x": x, "rank": torch.full_like(x, self.rank)})

    def row_count(self, data: DataProto) -> int:
        return len(data)


class SleepyGroup(RayWorkerGroup):
    hang_unless_rank = on_all_ranks(SleepyWorker.hang_unless_rank)
    rows_times = split_rows(SleepyWorker.rows_times)
    row_count = split_each(SleepyWorker.row_count)


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture
def group(ray_cluster):
    """Two fresh ranks per test: a rank still running an abandoned call would queue the next one."""
    group = SleepyGroup(SleepyWorker, ResourcePool(1, 2, 0, 1), call_timeout_s=120.0)  # process start-up
    yield group
    group.shutdown()


@pytest.mark.timeout(90)
def test_a_call_past_the_limit_names_the_stage_and_the_ranks_still_running(group):
    group.call_timeout_s = 2.0
    start = time.monotonic()
    with pytest.raises(WorkerTimeoutError, match=r"rank\(s\) \[1\] did not finish 'hang_unless_rank' within 2 s"):
        group.hang_unless_rank(0, "return")
    assert time.monotonic() - start < 10


@pytest.mark.timeout(60)
def test_a_placement_the_cluster_cannot_hold_fails_at_once(ray_cluster):
    with pytest.raises(ValueError, match="8 workers x 1 CPU do not fit the Ray cluster's 2 CPU"):
        RayWorkerGroup(SleepyWorker, ResourcePool(1, 8, 0, 1), call_timeout_s=2.0)


@pytest.mark.timeout(90)
def test_a_dead_rank_fails_the_call_while_the_others_still_block(group):
    """Rank 0 stays blocked (for 600 s); the call fails as soon as rank 1's death is known."""
    group.call_timeout_s = None
    start = time.monotonic()
    with pytest.raises(WorkerDiedError, match="worker rank 1 died during 'hang_unless_rank'"):
        group.hang_unless_rank(1, "die")
    assert time.monotonic() - start < 30


# ---- typed worker calls -------------------------------------------------------------------------

def test_a_misspelt_worker_method_fails_when_the_group_class_is_defined():
    with pytest.raises(AttributeError, match="hang_unles_rank"):
        class Misspelt(RayWorkerGroup):  # noqa: F841
            hang_unless_rank = on_all_ranks(SleepyWorker.hang_unles_rank)


def test_a_group_attribute_must_carry_the_worker_methods_name():
    with pytest.raises(Exception) as error:
        class Renamed(RayWorkerGroup):  # noqa: F841
            hang = on_all_ranks(SleepyWorker.hang_unless_rank)
    chain = f"{error.value} {error.value.__cause__}"
    assert "Renamed.hang is bound to SleepyWorker.hang_unless_rank" in chain


def test_a_group_built_for_a_worker_without_its_methods_fails_before_any_rank_starts():
    class OtherWorker:
        def hang_unless_rank(self, rank: int, action: str):
            return rank

    # No Ray cluster is running here: the check comes first.
    with pytest.raises(TypeError, match="SleepyGroup.hang_unless_rank calls SleepyWorker.hang_unless_rank, which "
                       "OtherWorker does not have"):
        SleepyGroup(OtherWorker, ResourcePool(1, 2, 0, 1))


@pytest.mark.timeout(120)
def test_split_rows_sends_each_rank_its_chunk_and_gathers_every_output_row_in_order(group):
    import inspect

    assert str(inspect.signature(group.rows_times)) == "(data: verl.protocol.DataProto, copies: int) -> verl.protocol.DataProto"
    assert group.rows_times.__doc__ == SleepyWorker.rows_times.__doc__
    data = DataProto.from_dict(tensors={"x": torch.arange(5.0)})  # 5 rows over 2 ranks: one padding row
    out = group.rows_times(data, 3)
    assert out.batch["x"].tolist() == [v for v in range(5) for _ in range(3)]
    assert out.batch["rank"].tolist() == [0.0] * 9 + [1.0] * 6
    assert group.row_count(data) == [3, 3]
