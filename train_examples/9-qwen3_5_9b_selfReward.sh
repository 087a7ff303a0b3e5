#!/usr/bin/env bash
# GRPO + the Vision-SR1 self-reward (summed, as the reference code) on Qwen3.5-9B (hybrid linear/full attention),
# 1 node x 8 GPUs: a thin entry to configs/qwen3_5_9b_selfReward.yaml through train_examples/run_grpo.sh (what changed
# from the Qwen3-VL recipe and why: that config's header). Not run on a GPU yet; on CPU the same code paths ran
# with the tiny Qwen3.5 (MODEL=<tiny qwen3.5 folder> bash train_examples/0-tiny_cpu_selfReward.sh).
#
#   bash train_examples/9-qwen3_5_9b_selfReward.sh [section.key=value ...]   (environment overrides: run_grpo.sh)
#   bash train_examples/9-qwen3_5_9b_selfReward.sh trainer.dry_run=true      (check it on any machine, CPU included)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/help.sh" "$@"
CONFIG=${CONFIG:-configs/qwen3_5_9b_selfReward.yaml} exec bash "$(dirname "${BASH_SOURCE[0]}")/run_grpo.sh" "$@"
