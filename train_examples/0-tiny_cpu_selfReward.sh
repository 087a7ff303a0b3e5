#!/usr/bin/env bash
# The whole Vision-SR1 recipe on CPU with the tiny model, end to end (the README's main job):
#   tiny model + synthetic data (if absent) -> eval -> cold-start SFT -> eval
#   -> GRPO with the self-reward -> merge the last checkpoint -> eval -> curves PNG + summary.
#
#   bash train_examples/0-tiny_cpu_selfReward.sh [key=value GRPO overrides ...]
#
# Environment: SEED (1), OUT (outputs/tiny_cpu_<variant>_seed<SEED>), STEPS (GRPO steps, 60),
# SFT_DIR (reuse the SFT model and its evals from another run's OUT, e.g. for a seed sweep),
# ENGINE (GRPO rollout engine: vllm | hf, default vllm), EVAL_ENGINE (evaluation engine, default hf:
# deterministic, and on the tiny model faster than three vLLM start-ups per evaluation),
# PYTHON (.venv/bin/python if present),
# MODEL (tiny model folder), DATA (synthetic data folder): a folder you name is used as it is and
# built only if absent; the defaults (models/tiny_qwen25vl, data/tiny_shapes) are the recipe's own and
# also rebuilt when their build_stamp.json records other arguments (an older checkout's defaults),
# RESPONSE_LENGTH (GRPO's and the evals' response budget; default: scripts/response_budget.py, the
# longest SFT answer rounded up to 32 tokens, at least the config's 96),
# SFT_ARGS (extra key=value overrides for the SFT stage, e.g. "trainer.max_steps=4"),
# SYNTHETIC_ARGS (extra scripts/make_synthetic_dataset.py flags, used when DATA is built, e.g.
# "--vague-description-rate 0.5": cold-start descriptions that cannot answer the question, the
# condition the self-reward targets; give such data its own DATA folder).
# VARIANT=visionR1 runs the same recipe with the self-reward off (format + accuracy reward).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/help.sh" "$@"
cd "$(dirname "$0")/.."

VARIANT=${VARIANT:-selfReward}
SEED=${SEED:-1}
STEPS=${STEPS:-60}
ENGINE=${ENGINE:-vllm}
EVAL_ENGINE=${EVAL_ENGINE:-hf}
OUT=${OUT:-outputs/tiny_cpu_${VARIANT}_seed${SEED}}
source scripts/find_python.sh
MODEL_GIVEN=${MODEL:+yes}
DATA_GIVEN=${DATA:+yes}
MODEL=${MODEL:-models/tiny_qwen25vl}
DATA=${DATA:-data/tiny_shapes}
read -r -a SFT_EXTRA <<< "${SFT_ARGS:-}"
read -r -a SYNTHETIC_EXTRA <<< "${SYNTHETIC_ARGS:-}"
case "$VARIANT" in
  selfReward) GRPO_ARGS=(self_reward.enable=true reward.reward_function=sr1) ;;
  visionR1) GRPO_ARGS=(self_reward.enable=false reward.reward_function=see_think) ;;
  *) echo "VARIANT must be selfReward or visionR1, got $VARIANT" >&2; exit 2 ;;
esac
start=$(date +%s)
step() { echo; echo "=== [$(( $(date +%s) - start ))s] $*"; }
evaluate() {  # evaluate MODEL_DIR NAME: greedy responses + self-reward scoring on the val split
  ENGINE=$EVAL_ENGINE DATA="$DATA/val.parquet" bash validation_examples/tiny_cpu.sh "$1" "$OUT/$2" \
    > "$OUT/$2.log" 2>&1 || { tail -30 "$OUT/$2.log"; exit 1; }
  grep -E "^(subset|overall) " "$OUT/$2.log" || true
}

step "tiny model and synthetic data"
# --reuse: kept when the folder's build_stamp.json matches, rebuilt when it records other arguments,
# refused when it holds files without a stamp (one built before stamps: remove it).
if [ -z "$MODEL_GIVEN" ]; then "$PYTHON" scripts/make_tiny_model.py --out "$MODEL" --seed 0 --reuse
elif [ ! -f "$MODEL/config.json" ]; then "$PYTHON" scripts/make_tiny_model.py --out "$MODEL" --seed 0; fi
if [ -z "$DATA_GIVEN" ]; then "$PYTHON" scripts/make_synthetic_dataset.py --out "$DATA" --seed 0 --reuse "${SYNTHETIC_EXTRA[@]}"
elif [ ! -f "$DATA/train.parquet" ]; then "$PYTHON" scripts/make_synthetic_dataset.py --out "$DATA" --seed 0 "${SYNTHETIC_EXTRA[@]}"; fi
mkdir -p "$OUT"
# GRPO's and the evals' response budget fits the data's longest SFT answer (96 on the shapes task).
RESPONSE_LENGTH=${RESPONSE_LENGTH:-$("$PYTHON" scripts/response_budget.py --model "$MODEL" --sft "$DATA/sft.json")}
export MAX_RESPONSE_LENGTH=$RESPONSE_LENGTH

if [ -n "${SFT_DIR:-}" ]; then
  step "reusing cold-start SFT model and its evals from $SFT_DIR"
  for part in sft eval_base eval_sft; do
    [ -e "$OUT/$part" ] || ln -s "$(cd "$SFT_DIR" && pwd)/$part" "$OUT/$part"
  done
else
  step "eval: random init"
  evaluate "$MODEL" eval_base

  step "cold-start SFT"
  "$PYTHON" -m verl.trainer.sft config=configs/sft_tiny_cpu.yaml model.model_path="$MODEL" \
    data.train_file="$DATA/sft.json" trainer.output_dir="$OUT/sft" trainer.overwrite_output_dir=true \
    "${SFT_EXTRA[@]}" > "$OUT/sft.log" 2>&1 || { tail -30 "$OUT/sft.log"; exit 1; }
  tail -1 "$OUT/sft.log"

  step "eval: after SFT"
  evaluate "$OUT/sft" eval_sft
fi

step "GRPO ($VARIANT, $STEPS steps)"
"$PYTHON" -m verl.trainer.main config=configs/tiny_cpu_selfReward.yaml \
  worker.actor.model.model_path="$OUT/sft" trainer.save_checkpoint_path="$OUT/grpo" \
  data.train_files="$DATA/train.parquet" data.val_files="$DATA/val.parquet" \
  trainer.experiment_name="tiny_cpu_${VARIANT}_seed${SEED}" trainer.max_steps="$STEPS" \
  worker.rollout.name="$ENGINE" trainer.seed="$SEED" data.seed="$SEED" worker.rollout.seed="$SEED" \
  data.max_response_length="$RESPONSE_LENGTH" \
  "${GRPO_ARGS[@]}" "$@" > "$OUT/grpo.log" 2>&1 || { tail -40 "$OUT/grpo.log"; exit 1; }
grep -aoE "step:[0-9]+ - .*" "$OUT/grpo.log" | grep -oE "step:[0-9]+|train/reward/(accuracy|visual):[0-9.e-]+" | paste -sd' ' | tail -c 400 || true

step "merge the last checkpoint"
LAST=$(cat "$OUT/grpo/latest_global_step.txt")
"$PYTHON" scripts/model_merger.py --local_dir "$OUT/grpo/global_step_$LAST/actor" --target_dir "$OUT/merged"

step "eval: after GRPO"
evaluate "$OUT/merged" eval_grpo

step "curves and summary"
"$PYTHON" scripts/plot_curves.py --metrics "$OUT/grpo/metrics.jsonl" --out "$OUT/curves.png"
"$PYTHON" scripts/recipe_summary.py "$OUT"
echo "done in $(( $(date +%s) - start )) s; outputs in $OUT"
