#!/usr/bin/env bash
# GRPO + the Vision-SR1 self-reward (summed, as the reference code) on Qwen3-VL-4B, 1 node x 8 GPUs: a thin entry to
# configs/qwen3_vl_4b_selfReward.yaml through train_examples/run_grpo.sh (what changed from the reference's Qwen2.5-VL
# recipe and why: that config's header; all recipes: docs/recipes.md). Cold-start SFT first:
#   torchrun --nproc_per_node 8 -m verl.trainer.sft config=configs/qwen3_vl_4b_sft_cold_start.yaml
#
#   bash train_examples/7-qwen3_vl_4b_selfReward.sh [section.key=value ...]   (environment overrides: run_grpo.sh)
#   bash train_examples/7-qwen3_vl_4b_selfReward.sh trainer.dry_run=true      (check it on any machine, CPU included)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/help.sh" "$@"
CONFIG=${CONFIG:-configs/qwen3_vl_4b_selfReward.yaml} exec bash "$(dirname "${BASH_SOURCE[0]}")/run_grpo.sh" "$@"
