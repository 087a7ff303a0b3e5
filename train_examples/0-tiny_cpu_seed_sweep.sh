#!/usr/bin/env bash
# The tiny CPU recipe over arms x seeds, every GRPO run starting from ONE cold-start SFT model (the
# first run trains it), so a table isolates what GRPO and each arm add. Each run is the whole recipe
# (train_examples/0-tiny_cpu_selfReward.sh: GRPO, merge, eval with the blank-image control). Then
# TABLE prints the table (mean +- std over seeds) and writes its JSON under ROOT.
#
#   bash train_examples/0-tiny_cpu_seed_sweep.sh [key=value GRPO overrides, passed to every run]
#
# Arms: the recipe's two variants, selfReward (the self-reward, its visual reward summed into the
# reward) and visionR1 (format + accuracy reward, no self-reward), and the perception objectives of
# 0-tiny_cpu_perception_sweep.sh: none (= visionR1), sr_summed (= selfReward), sr_paper_v2 (the
# self-reward with self_reward.objective=paper_v2), papo (visionR1 + PAPO's masked-image KL,
# verl/algorithms/papo.py), sr_papo (the self-reward + PAPO). Runs go seed-major, so an unfinished
# sweep has every arm at the same seeds.
#
# Environment: SEEDS ("1 2 3"), ARMS ("selfReward visionR1"; VARIANTS is an older name for it), ROOT
# (outputs/sweep), TABLE (scripts/sweep_table.py), ENGINE (vllm, the recipe's; hf is the
# bit-reproducible engine but ~5x slower to generate on CPU), SFT_DIR (another run's OUT whose SFT
# model and evals every run reuses; default: the first run trains it), and whatever
# 0-tiny_cpu_selfReward.sh reads (STEPS, MODEL, DATA, SYNTHETIC_ARGS, PYTHON, ...). A run with
# ROOT/<arm>_seed<N>/summary.json is skipped; an unfinished one is started again (its GRPO stage
# resumes from its last checkpoint).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/help.sh" "$@"
cd "$(dirname "$0")/.."
SEEDS=${SEEDS:-"1 2 3"}
ARMS=${ARMS:-${VARIANTS:-"selfReward visionR1"}}
ROOT=${ROOT:-outputs/sweep}
TABLE=${TABLE:-scripts/sweep_table.py}
export ENGINE=${ENGINE:-vllm}
source scripts/find_python.sh
read -r -a seeds <<< "$SEEDS"
read -r -a arms <<< "$ARMS"
SFT_RUN=${SFT_DIR:-"$ROOT/${arms[0]}_seed${seeds[0]}"}  # its cold-start SFT serves every run
unset SFT_DIR
arm_variant() {  # the recipe's VARIANT under each arm
  case "$1" in
    visionR1 | none | papo) echo visionR1 ;;
    selfReward | sr_summed | sr_paper_v2 | sr_papo) echo selfReward ;;
    *) echo "unknown arm $1 (selfReward visionR1 none sr_summed sr_paper_v2 papo sr_papo)" >&2; exit 2 ;;
  esac
}
arm_args() {  # the GRPO overrides each arm adds to its VARIANT's
  case "$1" in
    sr_paper_v2) echo "self_reward.objective=paper_v2" ;;
    papo | sr_papo) echo "worker.actor.papo.enable=true" ;;
    *) echo "" ;;
  esac
}
for arm in "${arms[@]}"; do arm_variant "$arm" > /dev/null; done  # a typo fails before any run
for seed in "${seeds[@]}"; do
  for arm in "${arms[@]}"; do
    out="$ROOT/${arm}_seed${seed}"
    if [ -f "$out/summary.json" ]; then echo "=== $out done, skipped"; continue; fi
    read -r -a extra <<< "$(arm_args "$arm")"
    echo "=== [$(date +%T)] $arm seed $seed -> $out"
    if [ "$out" = "$SFT_RUN" ]; then
      VARIANT=$(arm_variant "$arm") SEED=$seed OUT=$out bash train_examples/0-tiny_cpu_selfReward.sh "${extra[@]}" "$@"
    else
      VARIANT=$(arm_variant "$arm") SEED=$seed OUT=$out SFT_DIR=$SFT_RUN \
        bash train_examples/0-tiny_cpu_selfReward.sh "${extra[@]}" "$@"
    fi
  done
done
"$PYTHON" "$TABLE" "$ROOT"
