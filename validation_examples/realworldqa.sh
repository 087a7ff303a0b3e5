#!/usr/bin/env bash
# RealWorldQA with vLLM on a GPU node: responses, scores and a summary.
#
#   bash validation_examples/realworldqa.sh MODEL_PATH [OUT_DIR]
#
# Writes OUT_DIR/realworldqa.jsonl, realworldqa.scored.jsonl and realworldqa.summary.json (OUT_DIR defaults to
# outputs/eval/<basename of MODEL_PATH>); settings and switches: see run_benchmark.sh.
#
# Data: REALWORLDQA_DATA, default zli12321/realWorldQA@test: the hub copy the Vision-SR1 reference evaluates
# (github.com/zli12321/Vision-SR1, evaluation/full_rl/eval_vision_sr1.sh: data.val_files=<name>@test,
# prompt_key=problem, answer_key=answer, image_key=images).
# NOT verified from this environment (no hub access): before a run, check that the dataset
# exists, has that split and the columns problem (question with <image>), answer and images,
# or point REALWORLDQA_DATA at a local parquet/jsonl or name@split with those columns (set
# PROMPT_KEY/ANSWER_KEY/IMAGE_KEY for other column names).
#
# Scoring: rule-based; the reference sent rule-graded wrong answers to an LLM judge, set
# ANSWER_JUDGE_BASE_URL/ANSWER_JUDGE_MODEL for that (see run_benchmark.sh). Earlier reference
# scripts evaluated RealWorldQA inside zli12321/MLLM_test@test (column file_name names the source
# benchmark; verl.eval.score groups by it).
set -euo pipefail

MODEL_PATH=${1:?usage: bash validation_examples/realworldqa.sh MODEL_PATH [OUT_DIR]}
REALWORLDQA_DATA=${REALWORLDQA_DATA:-zli12321/realWorldQA@test}
exec bash "$(dirname "$0")/run_benchmark.sh" realworldqa "$REALWORLDQA_DATA" "$MODEL_PATH" "${2:-}"
