#!/usr/bin/env bash
# GRPO + the Vision-SR1 self-reward (summed reward, as the reference code), Qwen2.5-VL-7B, 1 node x 8 GPUs.
# The paper's objective (separate answer/visual advantages, pass-2 tokens trained):
#   CONFIG=configs/qwen2_5_vl_7b_selfReward_paper.yaml bash train_examples/2-qwen2_5_vl_7b_selfReward.sh
#
#   bash train_examples/2-qwen2_5_vl_7b_selfReward.sh [section.key=value ...]   (environment overrides: train_examples/run_grpo.sh)
set -euo pipefail
CONFIG=${CONFIG:-configs/qwen2_5_vl_7b_selfReward.yaml} exec bash "$(dirname "${BASH_SOURCE[0]}")/run_grpo.sh" "$@"
