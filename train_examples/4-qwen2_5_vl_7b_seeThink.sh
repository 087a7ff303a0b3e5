#!/usr/bin/env bash
# See-think ablation (Vision-SR1 format, no self-reward pass), Qwen2.5-VL-7B, 1 node x 8 GPUs.
# Settings and their sources: configs/qwen2_5_vl_7b_seeThink.yaml; all recipes: docs/recipes.md.
#
#   bash train_examples/4-qwen2_5_vl_7b_seeThink.sh [section.key=value ...]   (environment overrides: train_examples/run_grpo.sh)
set -euo pipefail
CONFIG=${CONFIG:-configs/qwen2_5_vl_7b_seeThink.yaml} exec bash "$(dirname "${BASH_SOURCE[0]}")/run_grpo.sh" "$@"
