#!/usr/bin/env bash
# Plain chain-of-thought GRPO baseline, Qwen2.5-VL-7B, 1 node x 8 GPUs.
# Settings and their sources: configs/qwen2_5_vl_7b_cot.yaml; all recipes: docs/recipes.md.
#
#   bash train_examples/5-qwen2_5_vl_7b_cot.sh [section.key=value ...]   (environment overrides: train_examples/run_grpo.sh)
set -euo pipefail
CONFIG=${CONFIG:-configs/qwen2_5_vl_7b_cot.yaml} exec bash "$(dirname "${BASH_SOURCE[0]}")/run_grpo.sh" "$@"
