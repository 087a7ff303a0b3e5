"""Loss semantics across ranks: the gradient of one mini-batch with 2 FSDP ranks (gloo, spawned
processes), each holding rows of unequal lengths split into a different number of token-budget
micro-batches, equals the gradient of 1 process holding all the rows."""

import os
import socket
from collections import defaultdict

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy
from transformers import AutoModelForImageTextToText

from verl.trainer.config import ActorConfig
from verl.protocol import DataProto
from verl.workers.actor import OBJECTIVE_PART, OBJECTIVE_WEIGHT, PPOActor
from verl.workers.engine.fsdp import shard_model
from verl.workers.engine.micro_batch import plan_micro_batches, row_lengths

# "+terms": the rows split into paper_v2's two objective terms, unevenly over the ranks, each term
# normalised by its own count over both ranks.
MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "token-mean+terms")
# Rank 0: the three longest responses (one image row has 12 tokens), rank 1: the short ones.
RANK_ROWS = ([0, 2, 4], [1, 3, 5])
BUDGET = 260  # rank 0 plans 3 micro-batches, rank 1 plans 2 (prompts 120-127 or 11-20 tokens)


def load(model_dir):
    return AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")


def actor_config(mode: str) -> ActorConfig:
    config = ActorConfig(loss_agg_mode=mode.removesuffix("+terms"), use_kl_loss=True, kl_loss_coef=0.1)
    config.micro_batch_size_per_device_for_update = 99
    return config


def rows_for(data: DataProto, mode: str) -> DataProto:
    if not mode.endswith("+terms"):
        return data
    parts = torch.tensor([0, 1, 0, 0, 1, 1])  # rank 0: terms 0, 0, 1; rank 1: 1, 0, 1
    weights = torch.where(parts == 0, 0.5, 0.25)
    return DataProto(batch={**data.batch, OBJECTIVE_PART: parts, OBJECTIVE_WEIGHT: weights},
                     non_tensor_batch=dict(data.non_tensor_batch), meta_info=dict(data.meta_info))


def _rank(rank: int, world_size: int, port: int, model_dir: str, data_path: str, out_path: str) -> None:
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world_size), "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    mesh = init_device_mesh("cpu", (world_size,))
    model = shard_model(load(model_dir), mesh, MixedPrecisionPolicy(param_dtype=torch.float32))
    data = torch.load(data_path, weights_only=False)
    results = {}
    for mode in MODES:
        rows = rows_for(data, mode)[RANK_ROWS[rank]]
        actor = PPOActor(model, actor_config(mode), 1, 1.0, max_token_len=BUDGET)
        model.zero_grad(set_to_none=True)
        metrics = defaultdict(list)
        assert actor.backward_mini_batch(rows, metrics) == 0
        grads = {name: p.grad.full_tensor() for name, p in model.named_parameters() if p.grad is not None}
        results[mode] = {"grads": grads, "pg_loss": metrics["actor/pg_loss"][0],
                         "local_micro_batches": len(plan_micro_batches(*row_lengths(rows), BUDGET)),
                         "micro_batches": metrics["actor/micro_batches"][0]}
    gathered = [None] * world_size
    dist.all_gather_object(gathered, {mode: {k: v for k, v in r.items() if k != "grads"} for mode, r in results.items()})
    if rank == 0:
        torch.save({"grads": {m: r["grads"] for m, r in results.items()}, "ranks": gathered}, out_path)
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_rank_result(tiny_model_dir, padded_batch, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ranks")
    data_path, out_path = str(tmp / "data.pt"), str(tmp / "out.pt")
    torch.save(padded_batch, data_path)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_rank, args=(2, port, tiny_model_dir, data_path, out_path), nprocs=2, join=True)
    return torch.load(out_path, weights_only=False)


@pytest.mark.parametrize("mode", MODES)
def test_two_ranks_gradient_equals_one_process(tiny_model_dir, padded_batch, two_rank_result, mode):
    ranks = [r[mode] for r in two_rank_result["ranks"]]
    # The ranks planned different numbers of micro-batches and agreed on the larger one.
    assert ranks[0]["local_micro_batches"] != ranks[1]["local_micro_batches"]
    assert ranks[0]["micro_batches"] == ranks[1]["micro_batches"] == max(r["local_micro_batches"] for r in ranks)

    model = load(tiny_model_dir)
    actor = PPOActor(model, actor_config(mode), 1, 1.0, max_token_len=BUDGET)
    metrics = defaultdict(list)
    actor.backward_mini_batch(rows_for(padded_batch, mode), metrics)
    # Per-rank loss shares (x world size) average to the single process's mini-batch loss.
    assert sum(r["pg_loss"] for r in ranks) / 2 == pytest.approx(metrics["actor/pg_loss"][0], rel=1e-5, abs=1e-7)
    expected = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    got = two_rank_result["grads"][mode]
    assert got.keys() == expected.keys()
    for name, grad in expected.items():
        # fp32 summation order differs (shards, micro-batches): tolerance relative to the tensor's scale.
        atol = 1e-4 * float(grad.abs().max()) + 1e-9
        torch.testing.assert_close(got[name], grad, atol=atol, rtol=1e-4, msg=lambda m, name=name: f"{name}: {m}")
