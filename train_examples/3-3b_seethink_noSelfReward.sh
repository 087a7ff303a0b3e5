#!/usr/bin/env bash
# See-think ablation: the Vision-SR1 format (description, think, \boxed{}), no self-reward pass, Qwen2.5-VL-3B, 1 node x 8 GPUs.
# The reference's command name (github.com/zli12321/Vision-SR1, train_examples/3-3b_seethink_noSelfReward.sh); a thin entry to
# configs/qwen2_5_vl_7b_seeThink.yaml with the 3B model (the cold-start SFT output of Qwen2.5-VL-3B-Instruct) and one GPU per vLLM engine,
# as configs/qwen2_5_vl_3b_selfReward.yaml does, through train_examples/run_grpo.sh (settings and their sources: that config; all recipes:
# docs/recipes.md).
#
#   bash train_examples/3-3b_seethink_noSelfReward.sh [section.key=value ...]    (environment overrides: MODEL_PATH, DATA, VAL_DATA,
#                                                          EXP_NAME; see train_examples/run_grpo.sh)
#   bash train_examples/3-3b_seethink_noSelfReward.sh trainer.dry_run=true       (check it on any machine, CPU included)
#   bash train_examples/3-3b_seethink_noSelfReward.sh --help
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/help.sh" "$@"
CONFIG=${CONFIG:-configs/qwen2_5_vl_7b_seeThink.yaml} exec bash "$(dirname "${BASH_SOURCE[0]}")/run_grpo.sh" \
  worker.actor.model.model_path=${MODEL_PATH:-checkpoints/sft/qwen2_5_vl_3b_cold_start} worker.rollout.tensor_parallel_size=1 trainer.experiment_name=${EXP_NAME:-qwen2_5_vl_3b_seeThink} "$@"
