#!/usr/bin/env bash
# Vision-SR1: GRPO + the self-reward (0.9 accuracy + 0.1 format + visual, summed as the reference code), Qwen2.5-VL-7B, 1 node x 8 GPUs.
# The reference's command name (github.com/zli12321/Vision-SR1, train_examples/2-7b_selfReward_train.sh); a thin entry to
# configs/qwen2_5_vl_7b_selfReward.yaml through train_examples/run_grpo.sh (settings and their sources: that config; all recipes:
# docs/recipes.md).
# The paper's objective instead (separate answer/visual advantages, pass-2 tokens trained):
#   CONFIG=configs/qwen2_5_vl_7b_selfReward_paper.yaml bash train_examples/2-7b_selfReward_train.sh
#
#   bash train_examples/2-7b_selfReward_train.sh [section.key=value ...]    (environment overrides: MODEL_PATH, DATA, VAL_DATA,
#                                                          EXP_NAME; see train_examples/run_grpo.sh)
#   bash train_examples/2-7b_selfReward_train.sh trainer.dry_run=true       (check it on any machine, CPU included)
#   bash train_examples/2-7b_selfReward_train.sh --help
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/help.sh" "$@"
CONFIG=${CONFIG:-configs/qwen2_5_vl_7b_selfReward.yaml} exec bash "$(dirname "${BASH_SOURCE[0]}")/run_grpo.sh" "$@"
