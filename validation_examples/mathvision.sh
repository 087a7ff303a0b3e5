#!/usr/bin/env bash
# MATH-Vision with vLLM on a GPU node: responses, scores and a summary.
#
#   bash validation_examples/mathvision.sh MODEL_PATH [OUT_DIR]
#
# Writes OUT_DIR/mathvision.jsonl, mathvision.scored.jsonl and mathvision.summary.json (OUT_DIR defaults to
# outputs/eval/<basename of MODEL_PATH>); settings and switches: see run_benchmark.sh.
#
# Data: MATHVISION_DATA, default zli12321/mathvision@test: the hub copy the Vision-SR1 reference evaluates
# (github.com/zli12321/Vision-SR1, evaluation/full_rl/eval_vision_sr1.sh: data.val_files=<name>@test,
# prompt_key=problem, answer_key=answer, image_key=images).
# NOT verified from this environment (no hub access): before a run, check that the dataset
# exists, has that split and the columns problem (question with <image>), answer and images,
# or point MATHVISION_DATA at a local parquet/jsonl or name@split with those columns (set
# PROMPT_KEY/ANSWER_KEY/IMAGE_KEY for other column names).
#
# Scoring: rule-based; the reference sent rule-graded wrong answers to an LLM judge; set
# ANSWER_JUDGE_BASE_URL/ANSWER_JUDGE_MODEL for that.
set -euo pipefail

MODEL_PATH=${1:?usage: bash validation_examples/mathvision.sh MODEL_PATH [OUT_DIR]}
MATHVISION_DATA=${MATHVISION_DATA:-zli12321/mathvision@test}
exec bash "$(dirname "$0")/run_benchmark.sh" mathvision "$MATHVISION_DATA" "$MODEL_PATH" "${2:-}"
