#!/usr/bin/env bash
# Shared by the benchmark scripts of this folder: generate responses with vLLM, then score them.
#
#   bash validation_examples/run_benchmark.sh NAME DATA MODEL_PATH [OUT_DIR]
#
# Writes OUT_DIR/NAME.jsonl (responses; re-running resumes), OUT_DIR/NAME.summary.json and
# OUT_DIR/NAME.scored.jsonl. OUT_DIR defaults to outputs/eval/<basename of MODEL_PATH>.
#
# Settings default to the Vision-SR1 reference's evaluation config (evaluation/eval_config.yaml
# in github.com/zli12321/Vision-SR1: greedy, n=1, max_response_length 4096, max_prompt_length
# 12800, min_pixels 262144, max_pixels 4194304); override through the environment:
#   FORMAT_PROMPT           format prompt jinja (configs/format_prompt/sr1.jinja)
#   MAX_RESPONSE_LENGTH     4096          MAX_PROMPT_LENGTH   12800
#   MIN_PIXELS              262144        MAX_PIXELS          4194304
#   SKIP_OVERLONG_PROMPTS   0 (1: drop prompts over MAX_PROMPT_LENGTH, logged, instead of stopping)
#   PROMPT_KEY / ANSWER_KEY / IMAGE_KEY   data columns (problem / answer / images)
#   TP                      vLLM tensor-parallel size (1)
#   GPU_MEMORY_UTILIZATION  0.7
#   BATCH_SIZE              prompts per vLLM generate() call (256)
#   SELF_REWARD             1: MODEL_PATH re-answers its own perceptions, text only (perception
#                           sufficiency and language-shortcut rate); 0: accuracy and format only
#   BLANK_CONTROL           1: also answer every prompt with its images blanked (same size) and report
#                           accuracy_blank_image / vision_reliance / accuracy_drop; doubles
#                           generation time (0 skips it)
#   REWARD                  score's --reward (default: sr1 with SELF_REWARD=1, see_think without)
#   ANSWER_JUDGE_BASE_URL, ANSWER_JUDGE_MODEL   an OpenAI-compatible server that re-checks answers the
#                           rule-based grader marks wrong (the reference's LLM-judge protocol);
#                           its key is read from the variable named by ANSWER_JUDGE_API_KEY_ENV
#                           (OPENAI_API_KEY), never from a file
#   PYTHON                  python3
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/help.sh" "$@"

NAME=${1:?usage: run_benchmark.sh NAME DATA MODEL_PATH [OUT_DIR]}
DATA=${2:?usage: run_benchmark.sh NAME DATA MODEL_PATH [OUT_DIR]}
MODEL_PATH=${3:?usage: run_benchmark.sh NAME DATA MODEL_PATH [OUT_DIR]}
OUT_DIR=${4:-outputs/eval/$(basename "$MODEL_PATH")}
PYTHON=${PYTHON:-python3}
SELF_REWARD=${SELF_REWARD:-1}
MAX_PROMPT_LENGTH=${MAX_PROMPT_LENGTH:-12800}
MAX_RESPONSE_LENGTH=${MAX_RESPONSE_LENGTH:-4096}
TP=${TP:-1}
GPU_MEMORY_UTILIZATION=${GPU_MEMORY_UTILIZATION:-0.7}

REPO_ROOT=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$OUT_DIR"
OUTPUT="$OUT_DIR/$NAME.jsonl"

GENERATE_ARGS=(
  --model_path "$MODEL_PATH" --data "$DATA" --output "$OUTPUT" --engine vllm
  --format_prompt "${FORMAT_PROMPT:-$REPO_ROOT/configs/format_prompt/sr1.jinja}"
  --prompt_key "${PROMPT_KEY:-problem}" --answer_key "${ANSWER_KEY:-answer}" --image_key "${IMAGE_KEY:-images}"
  --min_pixels "${MIN_PIXELS:-262144}" --max_pixels "${MAX_PIXELS:-4194304}"
  --max_prompt_length "$MAX_PROMPT_LENGTH" --max_response_length "$MAX_RESPONSE_LENGTH"
  --n 1 --temperature 0 --batch_size "${BATCH_SIZE:-256}"
  --tensor_parallel_size "$TP" --gpu_memory_utilization "$GPU_MEMORY_UTILIZATION"
)
if [ "${SKIP_OVERLONG_PROMPTS:-0}" = 1 ]; then
  GENERATE_ARGS+=(--skip_overlong_prompts)
fi
echo ">>> $NAME: generating responses for $DATA with $MODEL_PATH"
"$PYTHON" -m verl.eval.generate "${GENERATE_ARGS[@]}"

SCORE_ARGS=(--input "$OUTPUT")
if [ "${BLANK_CONTROL:-1}" = 1 ]; then
  BLANK_OUTPUT="$OUT_DIR/$NAME.blank.jsonl"
  echo ">>> $NAME: blank-image control (every image blanked, same size)"
  "$PYTHON" -m verl.eval.generate "${GENERATE_ARGS[@]}" --output "$BLANK_OUTPUT" --blank_images
  SCORE_ARGS+=(--blank_input "$BLANK_OUTPUT")
fi
if [ -n "${REWARD:-}" ]; then
  SCORE_ARGS+=(--reward "$REWARD")
fi
if [ "$SELF_REWARD" = 1 ]; then
  SCORE_ARGS+=(
    --self_reward_model "$MODEL_PATH" --engine vllm
    --reanswer_max_response_length "$MAX_RESPONSE_LENGTH"
    --tensor_parallel_size "$TP" --gpu_memory_utilization "$GPU_MEMORY_UTILIZATION"
  )
fi
if [ -n "${ANSWER_JUDGE_BASE_URL:-}" ]; then
  SCORE_ARGS+=(
    --answer_judge_base_url "$ANSWER_JUDGE_BASE_URL"
    --answer_judge_model "${ANSWER_JUDGE_MODEL:?ANSWER_JUDGE_MODEL must name the judge model}"
    --answer_judge_api_key_env "${ANSWER_JUDGE_API_KEY_ENV:-OPENAI_API_KEY}"
  )
fi
echo ">>> $NAME: scoring $OUTPUT"
"$PYTHON" -m verl.eval.score "${SCORE_ARGS[@]}"
