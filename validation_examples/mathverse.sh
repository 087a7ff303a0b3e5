#!/usr/bin/env bash
# MathVerse with vLLM on a GPU node: responses, scores and a summary.
#
#   bash validation_examples/mathverse.sh MODEL_PATH [OUT_DIR]
#
# Writes OUT_DIR/mathverse.jsonl, mathverse.scored.jsonl and mathverse.summary.json (OUT_DIR defaults to
# outputs/eval/<basename of MODEL_PATH>); settings and switches: see run_benchmark.sh.
#
# Data: MATHVERSE_DATA, default zli12321/mathverse@test: the hub copy the Vision-SR1 reference evaluates
# (github.com/zli12321/Vision-SR1, evaluation/full_rl/eval_vision_sr1.sh: data.val_files=<name>@test,
# prompt_key=problem, answer_key=answer, image_key=images).
# NOT verified from this environment (no hub access): before a run, check that the dataset
# exists, has that split and the columns problem (question with <image>), answer and images,
# or point MATHVERSE_DATA at a local parquet/jsonl or name@split with those columns (set
# PROMPT_KEY/ANSWER_KEY/IMAGE_KEY for other column names).
#
# Scoring: rule-based; the reference sent rule-graded wrong answers to an LLM judge (it reports
# rule-based accuracy lower than the judge's on math sets); set ANSWER_JUDGE_BASE_URL/ANSWER_JUDGE_MODEL.
set -euo pipefail

MODEL_PATH=${1:?usage: bash validation_examples/mathverse.sh MODEL_PATH [OUT_DIR]}
MATHVERSE_DATA=${MATHVERSE_DATA:-zli12321/mathverse@test}
exec bash "$(dirname "$0")/run_benchmark.sh" mathverse "$MATHVERSE_DATA" "$MODEL_PATH" "${2:-}"
