#!/usr/bin/env bash
# HallusionBench with vLLM on a GPU node: responses, scores and a summary.
#
#   bash validation_examples/hallusionbench.sh MODEL_PATH [OUT_DIR]
#
# Writes OUT_DIR/hallusionbench.jsonl, hallusionbench.scored.jsonl and hallusionbench.summary.json (OUT_DIR defaults to
# outputs/eval/<basename of MODEL_PATH>); settings and switches: see run_benchmark.sh.
#
# Data: HALLUSIONBENCH_DATA, default zli12321/hallusionbench@test: the hub copy the Vision-SR1 reference evaluates
# (github.com/zli12321/Vision-SR1, evaluation/full_rl/eval_vision_sr1.sh: data.val_files=<name>@test,
# prompt_key=problem, answer_key=answer, image_key=images).
# NOT verified from this environment (no hub access): before a run, check that the dataset
# exists, has that split and the columns problem (question with <image>), answer and images,
# or point HALLUSIONBENCH_DATA at a local parquet/jsonl or name@split with those columns (set
# PROMPT_KEY/ANSWER_KEY/IMAGE_KEY for other column names).
#
# Scoring: rule-based; the reference scored HallusionBench by string matching.
set -euo pipefail

MODEL_PATH=${1:?usage: bash validation_examples/hallusionbench.sh MODEL_PATH [OUT_DIR]}
HALLUSIONBENCH_DATA=${HALLUSIONBENCH_DATA:-zli12321/hallusionbench@test}
exec bash "$(dirname "$0")/run_benchmark.sh" hallusionbench "$HALLUSIONBENCH_DATA" "$MODEL_PATH" "${2:-}"
