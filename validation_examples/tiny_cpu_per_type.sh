#!/usr/bin/env bash
# Per question type on a larger held-out split: every finished run of a tiny seed sweep (ROOT/<arm>_seed<N>,
# train_examples/0-tiny_cpu_seed_sweep.sh) and their shared cold-start SFT model, answered greedily on
# DATA (accuracy only: no blank-image pass, no self-reward scoring), then scripts/per_type_table.py:
# per arm and question type, GRPO against its SFT start, flagged when below it by more than 2 SE.
# The sweep's own 200-prompt val split gives ~33-50 prompts a type, where only a drop of ~20 points
# passes 2 SE; a 1,200-prompt split gives 200-300.
#
#   python3 scripts/make_synthetic_dataset.py --out data/shapes_val1200 --seed 5 --train 8 --sft 8 --val 1200
#   bash validation_examples/tiny_cpu_per_type.sh outputs/perception data/shapes_val1200/val.parquet [OUT_ROOT]
#
# Writes OUT_ROOT (default ROOT_per_type)/<arm>_seed<N>/eval_grpo/, OUT_ROOT/sft_eval/ (linked as each
# run's eval_sft) and OUT_ROOT/per_type.json. Finished evaluations are kept, so it resumes.
# Environment: ENGINE (hf), MAX_RESPONSE_LENGTH (the recipe's budget for DATA's task:
# scripts/response_budget.py), PYTHON.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/help.sh" "$@"
ROOT=${1:?usage: bash validation_examples/tiny_cpu_per_type.sh ROOT DATA [OUT_ROOT]}
DATA=${2:?usage: bash validation_examples/tiny_cpu_per_type.sh ROOT DATA [OUT_ROOT]}
OUT_ROOT=${3:-${ROOT%/}_per_type}
# per_type_table.py reads each stage's val.summary.json, the name tiny_cpu.sh gives DATA=.../val.parquet.
[ "$(basename "$DATA")" = val.parquet ] || { echo "DATA must be a split named val.parquet, got $DATA" >&2; exit 2; }
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/find_python.sh"
HERE=$(cd "$(dirname "$0")" && pwd)
export BLANK_CONTROL=0 SELF_REWARD=0 DATA
runs=()
for run in "$ROOT"/*_seed*; do [ -d "$run/merged" ] && runs+=("$run"); done
[ ${#runs[@]} -gt 0 ] || { echo "no finished <arm>_seed<N>/merged under $ROOT" >&2; exit 1; }
mkdir -p "$OUT_ROOT"
SFT_EVAL=$(cd "$OUT_ROOT" && pwd)/sft_eval
if [ ! -f "$SFT_EVAL/val.summary.json" ]; then
  echo "[$(date +%T)] cold-start SFT model ($(readlink -f "${runs[0]}/sft"))"
  bash "$HERE/tiny_cpu.sh" "$(readlink -f "${runs[0]}/sft")" "$SFT_EVAL" > "$OUT_ROOT/sft_eval.log" 2>&1 \
    || { tail -20 "$OUT_ROOT/sft_eval.log"; exit 1; }
fi
for run in "${runs[@]}"; do
  name=$(basename "$run")
  mkdir -p "$OUT_ROOT/$name"
  ln -sfn "$SFT_EVAL" "$OUT_ROOT/$name/eval_sft"
  if [ ! -f "$OUT_ROOT/$name/eval_grpo/val.summary.json" ]; then
    echo "[$(date +%T)] $name"
    bash "$HERE/tiny_cpu.sh" "$run/merged" "$OUT_ROOT/$name/eval_grpo" > "$OUT_ROOT/$name/eval_grpo.log" 2>&1 \
      || { tail -20 "$OUT_ROOT/$name/eval_grpo.log"; exit 1; }
  fi
done
"$PYTHON" "$HERE/../scripts/per_type_table.py" "$OUT_ROOT"
