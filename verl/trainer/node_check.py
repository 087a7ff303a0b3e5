"""Start-up check of a run spread over several Ray nodes: before any model is loaded, every node
that holds ranks must see the folders those ranks open, the same ones the driver sees.

Without it a missing shared filesystem shows up late and quietly: each rank writes its checkpoint
shard to its own node's disk, the driver publishes a checkpoint whose shards are scattered (and
its manifest lists files it cannot see), and the failure comes at resume or merge time. Here the
driver writes a token file into the checkpoint folder and a task placed next to each node's ranks
must read the same token back, create a file there, and find the model folder(s); a node that
cannot is named (node id, address, its ranks) with the config key of the path.

The training data is not checked on the nodes: the driver alone reads it (verl/trainer/datasets.py)
and sends the rows, images included, to the ranks.
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import ray

if TYPE_CHECKING:  # the check runs on the nodes too: it must not import torch there
    from verl.single_controller.worker_group import RayWorkerGroup
    from verl.trainer.config import PPOConfig

TOKEN_PREFIX = ".node_check_"


class NodeCheckError(RuntimeError):
    """A node with ranks does not see a folder its ranks need; the message names the node and the key."""


@dataclass(frozen=True)
class NodeView:
    """What a task placed next to one node's ranks found there."""

    node_id: str
    address: str
    hostname: str
    problems: list[str] = field(default_factory=list)


def folders_ranks_open(config: PPOConfig) -> dict[str, str]:
    """{config key: path} of the folders the ranks read, limited to those that are folders on the
    driver (a hub id is downloaded by each node itself)."""
    model = config.worker.actor.model
    candidates = {
        "worker.actor.model.model_path": model.model_path,
        "worker.actor.model.tokenizer_path": model.tokenizer_path,
        "worker.critic.model_path": config.worker.critic.model_path,
        "trainer.load_checkpoint_path": config.trainer.load_checkpoint_path,
    }
    return {key: path for key, path in candidates.items() if path and os.path.isdir(path)}


def look_from_node(shared_key: str, shared_dir: str, token_name: str, token: str, folders: dict[str, str]) -> NodeView:
    """Runs on a node: reads the driver's token in `shared_dir`, writes and removes a file of its
    own there, and looks for each of `folders`."""
    problems = []
    token_path = os.path.join(shared_dir, token_name)
    if not os.path.isdir(shared_dir):
        problems.append(f"{shared_key}={shared_dir} does not exist on this node")
    else:
        try:
            with open(token_path) as f:
                seen = f.read()
        except OSError:
            seen = None
        if seen != token:
            problems.append(
                f"{shared_key}={shared_dir} is not the driver's folder on this node: the file {token_name} the "
                "driver wrote there is missing (each rank writes its checkpoint shard into this folder, so it "
                "must be on a filesystem every node shares, at the same path)"
            )
        probe = os.path.join(shared_dir, f"{token_name}.{uuid.uuid4().hex}")
        try:
            with open(probe, "w") as f:
                f.write(token)
            os.remove(probe)
        except OSError as error:
            problems.append(f"{shared_key}={shared_dir}: this node cannot write there ({error})")
    for key, path in folders.items():
        if not os.path.isdir(path):
            problems.append(f"{key}={path}: no such folder on this node")
    return NodeView(ray.get_runtime_context().get_node_id(), ray.util.get_node_ip_address(), socket.gethostname(), problems)


def check_nodes(workers: RayWorkerGroup, config: PPOConfig) -> str:
    """Raises NodeCheckError naming each node (and its ranks) that does not see the checkpoint
    folder the driver sees, or a model folder; returns one line saying which node each rank is on.
    Skipped when every rank shares the driver's node."""
    ranks_on: dict[str, list[int]] = {}
    for rank, node_id in enumerate(workers.rank_node_ids):
        ranks_on.setdefault(node_id, []).append(rank)
    addresses = {node["NodeID"]: node["NodeManagerAddress"] for node in ray.nodes()}
    placement = ", ".join(
        f"rank {rank} on node {node_id} ({addresses.get(node_id, '?')})" for rank, node_id in enumerate(workers.rank_node_ids)
    )
    summary = f"workers: {workers.world_size} ranks on {len(ranks_on)} node(s): {placement}"
    if set(ranks_on) == {ray.get_runtime_context().get_node_id()}:
        return summary
    shared_dir = config.trainer.checkpoint_root
    token_name = f"{TOKEN_PREFIX}{uuid.uuid4().hex}"
    token = f"{socket.gethostname()} pid {os.getpid()}"
    token_path = os.path.join(shared_dir, token_name)
    os.makedirs(shared_dir, exist_ok=True)
    with open(token_path, "w") as f:
        f.write(token)
    try:
        views = workers.run_on_each_node(
            look_from_node, "trainer.save_checkpoint_path", shared_dir, token_name, token, folders_ranks_open(config)
        )
    finally:
        os.remove(token_path)
    failures = [
        f"node {view.node_id} ({view.address}, host {view.hostname}, ranks {ranks_on.get(view.node_id)}):\n    "
        + "\n    ".join(view.problems)
        for view in views if view.problems
    ]
    if failures:
        raise NodeCheckError(
            f"{len(failures)} of {len(views)} nodes do not see what their ranks need (driver on host "
            f"{socket.gethostname()}):\n  " + "\n  ".join(failures)
        )
    return summary
