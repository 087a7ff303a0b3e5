"""Where RayWorkerGroup puts its ranks on a real two-node Ray cluster (tests/ray_nodes.py, 2 CPUs a
node, so that either node could hold both ranks): nnodes=2 puts one rank on each node, nnodes=1
both on one node, and more nodes than the cluster has fail at once naming what each node holds."""

import json
import subprocess
import sys

import pytest

from tests.ray_nodes import REPO_ROOT, two_nodes

# The driver runs in its own process: it joins the cluster with the cluster's auth token, which a
# pytest process that already ran Ray elsewhere could not take up.
DRIVER = """
import json, sys
import ray
from verl.single_controller.worker_group import RayWorkerGroup, ResourcePool

class Idle:
    def master_address(self):
        return "127.0.0.1", 0

    def init_distributed(self, addr, port):
        return None

ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
placements = {}
for nnodes, procs in ((2, 1), (1, 2)):
    group = RayWorkerGroup(Idle, ResourcePool(nnodes, procs, 0, 1), call_timeout_s=120.0)
    placements[f"{nnodes}x{procs}"] = group.rank_node_ids
    group.shutdown()
try:
    RayWorkerGroup(Idle, ResourcePool(3, 1, 0, 1), call_timeout_s=10.0)
except ValueError as error:
    placements["error"] = str(error)
print(json.dumps(placements))
"""


@pytest.mark.timeout(400)
def test_ranks_spread_one_node_each_with_nnodes_2_and_share_a_node_with_nnodes_1(tmp_path):
    with two_nodes(tmp_path, cpus_per_node=2) as cluster:
        run = subprocess.run([sys.executable, "-c", DRIVER, cluster.address], cwd=REPO_ROOT, env=cluster.env,
                             capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:] + cluster.log_tails()
    placements = json.loads(run.stdout.strip().splitlines()[-1])
    nodes = {cluster.head_id, cluster.second_id}
    spread, packed = placements["2x1"], placements["1x2"]
    assert set(spread) == nodes and len(spread) == 2, (spread, nodes)
    assert len(set(packed)) == 1 and packed[0] in nodes, (packed, nodes)
    assert placements["error"].startswith("trainer.nnodes=3 needs 3 Ray nodes with {'CPU': 1} each"), placements
    assert "the cluster has 2 such node(s) of 2" in placements["error"]
