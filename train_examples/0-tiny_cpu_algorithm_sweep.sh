#!/usr/bin/env bash
# GRPO vs GRPO+TIS vs DAPO vs GSPO on the tiny recipe's task, 3 seeds each, every run's GRPO stage
# starting from ONE cold-start SFT model (the recipe's), with the self-reward on (the recipe's
# reward). Two mini-batches per step (global_batch_size 16 of rollout_batch_size 32), so the second
# update is off-policy and clipping / importance weights act; everything else is the recipe's
# config. Validation accuracy (200 prompts, greedy) every VAL_FREQ steps is the comparison; then
# scripts/algorithm_table.py prints the table (mean +- std over seeds) and writes ROOT/algorithms.json.
#
#   bash train_examples/0-tiny_cpu_algorithm_sweep.sh      # 12 GRPO runs, ~5 min each on 2 cores
#
# Environment: SFT (the cold-start SFT model folder; default: outputs/sweep/selfReward_seed1/sft,
# written by 0-tiny_cpu_seed_sweep.sh), SEEDS ("1 2 3"), ARMS ("grpo grpo_tis dapo gspo"),
# STEPS (40), VAL_FREQ (10), ROOT (outputs/algorithms), ENGINE (vllm), DATA, PYTHON.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/help.sh" "$@"
cd "$(dirname "$0")/.."
SFT=${SFT:-outputs/sweep/selfReward_seed1/sft}
SEEDS=${SEEDS:-"1 2 3"}
ARMS=${ARMS:-"grpo grpo_tis dapo gspo"}
STEPS=${STEPS:-40}
VAL_FREQ=${VAL_FREQ:-10}
ROOT=${ROOT:-outputs/algorithms}
ENGINE=${ENGINE:-vllm}
DATA=${DATA:-data/tiny_shapes}
source scripts/find_python.sh
[ -f "$SFT/config.json" ] || { echo "no SFT model at $SFT: run train_examples/0-tiny_cpu_seed_sweep.sh (or set SFT=)" >&2; exit 2; }
arm_args() {
  case "$1" in
    grpo) echo "worker.actor.rollout_correction.mode=off" ;;
    grpo_tis) echo "worker.actor.rollout_correction.mode=tis worker.actor.rollout_correction.level=token worker.actor.rollout_correction.threshold=2.0" ;;
    dapo) echo "worker.actor.rollout_correction.mode=off worker.actor.clip_ratio_low=0.2 worker.actor.clip_ratio_high=0.28 worker.actor.loss_agg_mode=token-mean algorithm.overlong.buffer_length=16 algorithm.dynamic_sampling.enable=true algorithm.dynamic_sampling.metric=accuracy algorithm.dynamic_sampling.max_tries=3 algorithm.dynamic_sampling.fill_after_max_tries=true" ;;
    gspo) echo "worker.actor.rollout_correction.mode=off worker.actor.policy_loss=gspo worker.actor.loss_agg_mode=seq-mean-token-mean worker.actor.clip_ratio_low=3e-4 worker.actor.clip_ratio_high=4e-4" ;;
    *) echo "unknown arm $1 (grpo grpo_tis dapo gspo)" >&2; exit 2 ;;
  esac
}
for seed in $SEEDS; do
  for arm in $ARMS; do
    out="$ROOT/${arm}_seed${seed}"
    if [ -f "$out/done" ]; then echo "=== $out done, skipped"; continue; fi
    read -r -a extra <<< "$(arm_args "$arm")"
    echo "=== [$(date +%T)] $arm seed $seed -> $out"
    rm -rf "$out" && mkdir -p "$out"
    "$PYTHON" -m verl.trainer.main config=configs/tiny_cpu_selfReward.yaml \
      worker.actor.model.model_path="$SFT" trainer.save_checkpoint_path="$out" \
      data.train_files="$DATA/train.parquet" data.val_files="$DATA/val.parquet" \
      trainer.experiment_name="algorithms_${arm}_seed${seed}" trainer.max_steps="$STEPS" \
      trainer.val_freq="$VAL_FREQ" trainer.save_freq=-1 trainer.logger=[file] \
      worker.actor.global_batch_size=16 \
      worker.rollout.name="$ENGINE" trainer.seed="$seed" data.seed="$seed" worker.rollout.seed="$seed" \
      "${extra[@]}" > "$out/train.log" 2>&1 || { tail -40 "$out/train.log"; exit 1; }
    touch "$out/done"
  done
done
"$PYTHON" scripts/algorithm_table.py "$ROOT"
