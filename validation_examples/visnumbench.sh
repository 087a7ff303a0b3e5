#!/usr/bin/env bash
# VisNumBench with vLLM on a GPU node: responses, scores and a summary.
#
#   bash validation_examples/visnumbench.sh MODEL_PATH [OUT_DIR]
#
# Writes OUT_DIR/visnumbench.jsonl, visnumbench.scored.jsonl and visnumbench.summary.json (OUT_DIR defaults to
# outputs/eval/<basename of MODEL_PATH>); settings and switches: see run_benchmark.sh.
#
# Data: VISNUMBENCH_DATA, default zli12321/visnumbench@test: the hub copy the Vision-SR1 reference evaluates
# (github.com/zli12321/Vision-SR1, evaluation/full_rl/eval_vision_sr1.sh: data.val_files=<name>@test,
# prompt_key=problem, answer_key=answer, image_key=images).
# NOT verified from this environment (no hub access): before a run, check that the dataset
# exists, has that split and the columns problem (question with <image>), answer and images,
# or point VISNUMBENCH_DATA at a local parquet/jsonl or name@split with those columns (set
# PROMPT_KEY/ANSWER_KEY/IMAGE_KEY for other column names).
#
# Scoring: rule-based; the reference scored VisNumBench by string matching (multiple choice).
set -euo pipefail

MODEL_PATH=${1:?usage: bash validation_examples/visnumbench.sh MODEL_PATH [OUT_DIR]}
VISNUMBENCH_DATA=${VISNUMBENCH_DATA:-zli12321/visnumbench@test}
exec bash "$(dirname "$0")/run_benchmark.sh" visnumbench "$VISNUMBENCH_DATA" "$MODEL_PATH" "${2:-}"
