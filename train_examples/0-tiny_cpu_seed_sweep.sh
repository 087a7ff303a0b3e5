#!/usr/bin/env bash
# The tiny CPU recipe's results table: both variants (self-reward, and Vision-R1-style without it)
# x 3 seeds, all GRPO runs starting from ONE cold-start SFT model, so the table isolates what GRPO
# and the self-reward add. Then scripts/sweep_table.py prints the README's table (mean +- std over
# seeds) and writes ROOT/sweep.json.
#
#   bash train_examples/0-tiny_cpu_seed_sweep.sh [key=value GRPO overrides, passed to every run]
#
# Environment: SEEDS ("1 2 3"), VARIANTS ("selfReward visionR1"), ROOT (outputs/sweep), ENGINE (vllm, the recipe's; hf is the
# bit-reproducible engine but ~5x slower to generate on CPU), SFT_DIR (another run's OUT whose SFT
# model and evals every run reuses; default: the first run trains it), and whatever
# 0-tiny_cpu_selfReward.sh reads (STEPS, MODEL, DATA, SYNTHETIC_ARGS, PYTHON, ...).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/help.sh" "$@"
cd "$(dirname "$0")/.."
SEEDS=${SEEDS:-"1 2 3"}
VARIANTS=${VARIANTS:-"selfReward visionR1"}
ROOT=${ROOT:-outputs/sweep}
export ENGINE=${ENGINE:-vllm}
source scripts/find_python.sh
read -r -a seeds <<< "$SEEDS"
read -r -a variants <<< "$VARIANTS"
SFT_RUN=${SFT_DIR:-"$ROOT/${variants[0]}_seed${seeds[0]}"}  # its cold-start SFT serves every run
unset SFT_DIR
for seed in "${seeds[@]}"; do
  for variant in "${variants[@]}"; do
    out="$ROOT/${variant}_seed${seed}"
    if [ -f "$out/summary.json" ]; then echo "=== $out done, skipped"; continue; fi
    echo "=== $variant seed $seed -> $out"
    if [ "$out" = "$SFT_RUN" ]; then
      VARIANT=$variant SEED=$seed OUT=$out bash train_examples/0-tiny_cpu_selfReward.sh "$@"
    else
      VARIANT=$variant SEED=$seed OUT=$out SFT_DIR=$SFT_RUN bash train_examples/0-tiny_cpu_selfReward.sh "$@"
    fi
  done
done
"$PYTHON" scripts/sweep_table.py "$ROOT"
