#!/usr/bin/env bash
# Vision-R1-style GRPO baseline (<think> + \boxed{}, format + accuracy reward), Qwen2.5-VL-7B, 1 node x 8 GPUs.
# Settings and their sources: configs/qwen2_5_vl_7b_visionR1.yaml; all recipes: docs/recipes.md.
#
#   bash train_examples/3-qwen2_5_vl_7b_visionR1.sh [section.key=value ...]   (environment overrides: train_examples/run_grpo.sh)
set -euo pipefail
CONFIG=${CONFIG:-configs/qwen2_5_vl_7b_visionR1.yaml} exec bash "$(dirname "${BASH_SOURCE[0]}")/run_grpo.sh" "$@"
