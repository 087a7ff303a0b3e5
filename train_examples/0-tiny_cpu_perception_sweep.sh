#!/usr/bin/env bash
# The perception objectives compared on the tiny recipe (issue 30): five GRPO arms x 3 seeds from ONE
# cold-start SFT model, run by 0-tiny_cpu_seed_sweep.sh (which says what each arm is); then
# scripts/perception_table.py prints the table (mean +- std over seeds, the change against `none`)
# and writes ROOT/perception.json.
#
#   bash train_examples/0-tiny_cpu_perception_sweep.sh [key=value GRPO overrides, passed to every run]
#
# Environment: ARMS ("none sr_summed sr_paper_v2 papo sr_papo"), ROOT (outputs/perception), and
# whatever 0-tiny_cpu_seed_sweep.sh reads (SEEDS, SFT_DIR, ENGINE, STEPS, MODEL, DATA, ...).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/help.sh" "$@"
ARMS=${ARMS:-"none sr_summed sr_paper_v2 papo sr_papo"} ROOT=${ROOT:-outputs/perception} \
  TABLE=scripts/perception_table.py exec bash "$(dirname "$0")/0-tiny_cpu_seed_sweep.sh" "$@"
