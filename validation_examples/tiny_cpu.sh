#!/usr/bin/env bash
# Evaluate a model folder on the synthetic shapes val split, on CPU (HF engine by default).
#
#   bash validation_examples/tiny_cpu.sh MODEL_DIR [OUT_DIR]
#
# MODEL_DIR is an HF checkpoint folder (e.g. models/tiny_qwen25vl, or a merged actor checkpoint).
# Writes OUT_DIR/NAME.jsonl (responses), NAME.scored.jsonl and NAME.summary.json, NAME being the data's
# own (val for data/tiny_shapes/val.parquet, mmstar_test for org/mmstar@test);
# OUT_DIR defaults to outputs/eval/<basename of MODEL_DIR>. The summary is grouped by the split's
# question_type and distractor columns: on distractor rows the training prior is wrong, so the
# language-shortcut rate there shows answers given from the question instead of the image.
# Build the inputs first:  python3 scripts/make_tiny_model.py --out models/tiny_qwen25vl
#                          python3 scripts/make_synthetic_dataset.py --out data/tiny_shapes
# Environment: ENGINE (hf | vllm, default hf), DATA (data/tiny_shapes/val.parquet),
# the caps, each the tiny recipe's own (configs/tiny_cpu_selfReward.yaml) so the eval scores as its validation
# does: MAX_PROMPT_LENGTH (400), MAX_RESPONSE_LENGTH (96; the longest synthetic SFT answer is 71 tokens with its
# end token), REANSWER_MAX_PROMPT_LENGTH (192), REANSWER_MAX_RESPONSE_LENGTH (96), SELF_REWARD (1: MODEL_DIR
# re-answers its own perceptions; 0: accuracy and format only), BLANK_CONTROL (1: every prompt answered a second
# time with a blank image of the same size -> OUT_DIR/NAME.blank.jsonl, and the summary gains
# accuracy_blank_image, vision_reliance, accuracy_drop; 0: skip), SAMPLES and TEMPERATURE (1 and 0:
# one greedy answer per prompt; e.g. SAMPLES=8 TEMPERATURE=1.0 adds accuracy_best_of_n and
# accuracy_group_spread, the room GRPO's groups have to learn from), PYTHON (.venv/bin/python when present,
# else python3).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/help.sh" "$@"

MODEL_DIR=${1:?usage: bash validation_examples/tiny_cpu.sh MODEL_DIR [OUT_DIR]}
OUT_DIR=${2:-outputs/eval/$(basename "$MODEL_DIR")}
ENGINE=${ENGINE:-hf}
DATA=${DATA:-data/tiny_shapes/val.parquet}
MAX_PROMPT_LENGTH=${MAX_PROMPT_LENGTH:-400}
MAX_RESPONSE_LENGTH=${MAX_RESPONSE_LENGTH:-96}
REANSWER_MAX_PROMPT_LENGTH=${REANSWER_MAX_PROMPT_LENGTH:-192}
REANSWER_MAX_RESPONSE_LENGTH=${REANSWER_MAX_RESPONSE_LENGTH:-96}
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/find_python.sh"
REPO_ROOT=$(cd "$(dirname "$0")/.." && pwd)
# Output names come from the data: X.parquet -> X.*, DIR@split -> DIR_split.*
NAME=${DATA%/}; NAME=${NAME##*/}; NAME=${NAME%.parquet}; NAME=${NAME%.jsonl}; NAME=${NAME%.json}; NAME=${NAME//@/_}
OUTPUT="$OUT_DIR/$NAME.jsonl"
# The tiny checkpoint's processor range (56x56 to 112x112 pixels); float32 on CPU.
ENGINE_ARGS=(--engine "$ENGINE" --dtype float32)
if [ "$ENGINE" = vllm ]; then
  ENGINE_ARGS+=(--enforce_eager)
fi

mkdir -p "$OUT_DIR"
GENERATE_ARGS=(
  --model_path "$MODEL_DIR" --data "$DATA"
  --format_prompt "$REPO_ROOT/configs/format_prompt/sr1.jinja"
  --min_pixels 3136 --max_pixels 12544 --max_prompt_length "$MAX_PROMPT_LENGTH"
  --max_response_length "$MAX_RESPONSE_LENGTH" --n "${SAMPLES:-1}" --temperature "${TEMPERATURE:-0}" --batch_size 64
  "${ENGINE_ARGS[@]}"
)
"$PYTHON" -m verl.eval.generate "${GENERATE_ARGS[@]}" --output "$OUTPUT"

SCORE_ARGS=(--input "$OUTPUT")
if [ "${BLANK_CONTROL:-1}" = 1 ]; then
  BLANK_OUTPUT="$OUT_DIR/$NAME.blank.jsonl"
  "$PYTHON" -m verl.eval.generate "${GENERATE_ARGS[@]}" --output "$BLANK_OUTPUT" --blank_images
  SCORE_ARGS+=(--blank_input "$BLANK_OUTPUT")
fi
if [ "${SELF_REWARD:-1}" = 1 ]; then
  SCORE_ARGS+=(--self_reward_model "$MODEL_DIR" --reanswer_max_prompt_length "$REANSWER_MAX_PROMPT_LENGTH"
               --reanswer_max_response_length "$REANSWER_MAX_RESPONSE_LENGTH" "${ENGINE_ARGS[@]}")
fi
"$PYTHON" -m verl.eval.score "${SCORE_ARGS[@]}"
