"""RayWorkerGroup's failure paths on a real local Ray cluster with a dummy worker class: a rank
that dies while the others block, a call that outlives the time limit, an impossible placement."""

import os
import time

import pytest
import ray

from verl.single_controller.worker_group import RayWorkerGroup, ResourcePool, WorkerDiedError, WorkerTimeoutError


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


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture
def group(ray_cluster):
    """Two fresh ranks per test: a rank still running an abandoned call would queue the next one."""
    group = RayWorkerGroup(SleepyWorker, ResourcePool(1, 2, 0, 1), call_timeout_s=120.0)  # process start-up
    yield group
    group.shutdown()


@pytest.mark.timeout(90)
def test_a_call_past_the_limit_names_the_stage_and_the_ranks_still_running(group):
    group.call_timeout_s = 2.0
    start = time.monotonic()
    with pytest.raises(WorkerTimeoutError, match=r"rank\(s\) \[1\] did not finish 'hang_unless_rank' within 2 s"):
        group.execute_all("hang_unless_rank", 0, "return")
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
        group.execute_all("hang_unless_rank", 1, "die")
    assert time.monotonic() - start < 30
