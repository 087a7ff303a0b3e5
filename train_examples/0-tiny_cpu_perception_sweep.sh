#!/usr/bin/env bash
# The perception objectives compared on the tiny recipe (issue 30): five GRPO arms x 3 seeds, every
# run's GRPO stage starting from ONE cold-start SFT model (the first run trains it), each run the
# whole recipe (train_examples/0-tiny_cpu_selfReward.sh: GRPO, merge, eval with the blank-image
# control). Then scripts/perception_table.py prints the table (mean +- std over seeds) and writes
# ROOT/perception.json.
#
#   bash train_examples/0-tiny_cpu_perception_sweep.sh [key=value GRPO overrides, passed to every run]
#
# Arms: none (no perception objective: the recipe's VARIANT=visionR1), sr_summed (the self-reward,
# its visual reward summed into one reward: the recipe's default), sr_paper_v2 (the self-reward with
# self_reward.objective=paper_v2; the sr1 tags are kept, since the SFT model learned <description>),
# papo (VARIANT=visionR1 + PAPO's masked-image KL, verl/algorithms/papo.py), sr_papo (the self-reward
# + PAPO). Runs go seed-major, so an unfinished sweep still has every arm at the same seeds.
#
# Environment: SEEDS ("1 2 3"), ARMS ("none sr_summed sr_paper_v2 papo sr_papo"), ROOT
# (outputs/perception), SFT_DIR (another run's OUT whose SFT model and evals every run reuses;
# default: the first run trains it), ENGINE (vllm), and whatever 0-tiny_cpu_selfReward.sh reads
# (STEPS, MODEL, DATA, PYTHON, ...). A run with ROOT/<arm>_seed<N>/summary.json is skipped; an
# unfinished one is started again (its GRPO stage resumes from its last checkpoint).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/help.sh" "$@"
cd "$(dirname "$0")/.."
SEEDS=${SEEDS:-"1 2 3"}
ARMS=${ARMS:-"none sr_summed sr_paper_v2 papo sr_papo"}
ROOT=${ROOT:-outputs/perception}
export ENGINE=${ENGINE:-vllm}
source scripts/find_python.sh
read -r -a seeds <<< "$SEEDS"
read -r -a arms <<< "$ARMS"
SFT_RUN=${SFT_DIR:-"$ROOT/${arms[0]}_seed${seeds[0]}"}  # its cold-start SFT serves every run
unset SFT_DIR
arm_variant() {  # the recipe's VARIANT under each arm
  case "$1" in
    none | papo) echo visionR1 ;;
    sr_summed | sr_paper_v2 | sr_papo) echo selfReward ;;
    *) echo "unknown arm $1 (none sr_summed sr_paper_v2 papo sr_papo)" >&2; exit 2 ;;
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
"$PYTHON" scripts/perception_table.py "$ROOT"
