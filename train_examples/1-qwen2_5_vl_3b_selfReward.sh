#!/usr/bin/env bash
# GRPO + the Vision-SR1 self-reward (summed reward, as the reference code), Qwen2.5-VL-3B, 1 node x 8 GPUs.
# Settings and their sources: configs/qwen2_5_vl_3b_selfReward.yaml; all recipes: docs/recipes.md.
#
#   bash train_examples/1-qwen2_5_vl_3b_selfReward.sh [section.key=value ...]   (environment overrides: train_examples/run_grpo.sh)
set -euo pipefail
CONFIG=${CONFIG:-configs/qwen2_5_vl_3b_selfReward.yaml} exec bash "$(dirname "${BASH_SOURCE[0]}")/run_grpo.sh" "$@"
