#!/usr/bin/env bash
# MathVista with vLLM on a GPU node: responses, scores and a summary.
#
#   bash validation_examples/mathvista.sh MODEL_PATH [OUT_DIR]
#
# Writes OUT_DIR/mathvista.jsonl, mathvista.scored.jsonl and mathvista.summary.json (OUT_DIR defaults to
# outputs/eval/<basename of MODEL_PATH>); settings and switches: see run_benchmark.sh.
#
# Data: MATHVISTA_DATA, default zli12321/mathvista@test: the hub copy the Vision-SR1 reference evaluates
# (github.com/zli12321/Vision-SR1, evaluation/full_rl/eval_vision_sr1.sh: data.val_files=<name>@test,
# prompt_key=problem, answer_key=answer, image_key=images).
# NOT verified from this environment (no hub access): before a run, check that the dataset
# exists, has that split and the columns problem (question with <image>), answer and images,
# or point MATHVISTA_DATA at a local parquet/jsonl or name@split with those columns (set
# PROMPT_KEY/ANSWER_KEY/IMAGE_KEY for other column names).
#
# Scoring: rule-based; the reference sent rule-graded wrong answers to an LLM judge; set
# ANSWER_JUDGE_BASE_URL/ANSWER_JUDGE_MODEL for that.
set -euo pipefail

MODEL_PATH=${1:?usage: bash validation_examples/mathvista.sh MODEL_PATH [OUT_DIR]}
MATHVISTA_DATA=${MATHVISTA_DATA:-zli12321/mathvista@test}
exec bash "$(dirname "$0")/run_benchmark.sh" mathvista "$MATHVISTA_DATA" "$MODEL_PATH" "${2:-}"
