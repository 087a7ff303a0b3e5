#!/usr/bin/env bash
# GRPO + the Vision-SR1 self-reward, Qwen2.5-VL-7B, on NNODES nodes x 8 GPUs joined into one Ray cluster.
# Same recipe as 2-7b_selfReward_train.sh (configs/qwen2_5_vl_7b_selfReward.yaml); docs/recipes.md.
#
# Run this script once on every node, with the same repository checkout and venv at the same path on each
# (a shared filesystem: every rank writes its checkpoint shard into the same folder, and every node reads
# the model folder):
#   node 0:      NNODES=2 NODE_RANK=0 HEAD_ADDR=10.0.0.1 bash train_examples/6-qwen2_5_vl_7b_selfReward_multinode.sh [key=value ...]
#   node i > 0:  NNODES=2 NODE_RANK=i HEAD_ADDR=10.0.0.1 bash train_examples/6-qwen2_5_vl_7b_selfReward_multinode.sh
# Slurm, one task per node:
#   srun --nodes=2 --ntasks-per-node=1 bash -c 'NNODES=$SLURM_NNODES NODE_RANK=$SLURM_NODEID \
#       HEAD_ADDR=<node 0 IP> bash train_examples/6-qwen2_5_vl_7b_selfReward_multinode.sh'
#
# Steps:
#   1. node 0 checks the config (batch sizes against NNODES x GPUS_PER_NODE) before anything starts,
#      then runs `"${RAY[@]}" start --head` on HEAD_ADDR:RAY_PORT;
#   2. every other node waits for that port to open, then runs `ray start --address=HEAD_ADDR:RAY_PORT --block`
#      and stays in the cluster until the head goes away;
#   3. node 0 waits until the cluster counts NNODES x GPUS_PER_NODE GPUs (at most WAIT_S seconds), then runs
#      python3 -m verl.trainer.main ... trainer.nnodes=$NNODES trainer.ray_address=auto;
#   4. node 0 stops its Ray node when training ends or fails; the other nodes' `ray start --block` then return.
#
# Environment:
#   NNODES, NODE_RANK, HEAD_ADDR  required (HEAD_ADDR: node 0's IP as the other nodes reach it)
#   GPUS_PER_NODE (8), RAY_PORT (6379), WAIT_S (900)
#   MODEL_PATH, DATA, VAL_DATA, EXP_NAME, CONFIG   as in 2-7b_selfReward_train.sh (read on node 0 only)
# Every Python step (and `ray start`, whose Python the Ray workers run) uses $PYTHON: the project's .venv/bin/python
# when present, else python3 (scripts/find_python.sh); no activated venv is needed.
# Ray workers inherit the environment of `ray start`: export NCCL_SOCKET_IFNAME, NCCL_IB_HCA, HF_HOME, ... on
# every node before running this script. WANDB_API_KEY is needed on node 0 only (the driver logs).
# Export RAY_AUTH_MODE=token and the same RAY_AUTH_TOKEN on every node (or RAY_AUTH_MODE=disabled on all): a
# head that finds ~/.ray/auth_token turns Ray's token auth on and refuses nodes without it (docs/recipes.md).
# Before the models load, the run checks that every node sees the checkpoint folder and the model folder
# the driver sees (verl/trainer/node_check.py) and names a node that does not.
# 128 prompts x 8 responses = 1024 responses per update must split evenly into micro-batches of 4 on every GPU:
# NNODES x GPUS_PER_NODE must divide 256 (2, 4, 8 ... nodes of 8 GPUs).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/help.sh" "$@"
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/find_python.sh
# The Ray CLI of $PYTHON's environment (a bare `ray` would need the venv on PATH).
RAY=("$PYTHON" -m ray.scripts.scripts)

: "${NNODES:?set NNODES, the number of nodes}"
: "${NODE_RANK:?set NODE_RANK (0 on the head node, 1..NNODES-1 on the others)}"
: "${HEAD_ADDR:?set HEAD_ADDR, the IP address of node 0}"
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
RAY_PORT=${RAY_PORT:-6379}
WAIT_S=${WAIT_S:-900}
export PYTHONUNBUFFERED=1

if (( NODE_RANK != 0 )); then
    deadline=$((SECONDS + WAIT_S))
    until "$PYTHON" -c 'import socket, sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)' \
            "$HEAD_ADDR" "$RAY_PORT" 2>/dev/null; do
        if (( SECONDS >= deadline )); then
            echo "node $NODE_RANK: no Ray head at $HEAD_ADDR:$RAY_PORT after ${WAIT_S}s" >&2
            exit 1
        fi
        sleep 5
    done
    exec "${RAY[@]}" start --address="$HEAD_ADDR:$RAY_PORT" --num-gpus="$GPUS_PER_NODE" --disable-usage-stats --block
fi

args=("config=${CONFIG:-configs/qwen2_5_vl_7b_selfReward.yaml}")
if [[ -n ${MODEL_PATH:-} ]]; then args+=("worker.actor.model.model_path=$MODEL_PATH"); fi
if [[ -n ${DATA:-} ]]; then args+=("data.train_files=$DATA"); fi
if [[ -v VAL_DATA ]]; then args+=("data.val_files=${VAL_DATA:-''}"); fi
if [[ -n ${EXP_NAME:-} ]]; then args+=("trainer.experiment_name=$EXP_NAME"); fi
args+=("trainer.nnodes=$NNODES" "trainer.n_gpus_per_node=$GPUS_PER_NODE" "trainer.ray_address=auto")

# A config error should stop node 0 before the other nodes are tied up waiting for it.
"$PYTHON" - "${args[@]}" "$@" <<'EOF'
import sys

from verl.trainer.config import ConfigError, PPOConfig, parse_cli

try:
    parse_cli(PPOConfig, sys.argv[1:]).validate()
except ConfigError as error:
    sys.exit(f"config error: {error}")
EOF

"${RAY[@]}" start --head --node-ip-address="$HEAD_ADDR" --port="$RAY_PORT" --num-gpus="$GPUS_PER_NODE" --disable-usage-stats
trap '"${RAY[@]}" stop' EXIT

expected_gpus=$((NNODES * GPUS_PER_NODE))
deadline=$((SECONDS + WAIT_S))
while true; do
    gpus=$("$PYTHON" -c 'import ray; ray.init(address="auto", logging_level="ERROR"); print(int(ray.cluster_resources().get("GPU", 0)))' \
        2>/dev/null || echo 0)
    if (( gpus >= expected_gpus )); then
        break
    fi
    if (( SECONDS >= deadline )); then
        echo "head: the Ray cluster has $gpus of $expected_gpus GPUs after ${WAIT_S}s; are all $NNODES nodes running this script?" >&2
        exit 1
    fi
    sleep 10
done
echo "head: Ray cluster ready, $gpus GPUs on $NNODES nodes"

"$PYTHON" -m verl.trainer.main "${args[@]}" "$@"
