#!/usr/bin/env bash
# MMStar with vLLM on a GPU node: responses, scores and a summary.
#
#   bash validation_examples/mmstar.sh MODEL_PATH [OUT_DIR]
#
# Writes OUT_DIR/mmstar.jsonl, mmstar.scored.jsonl and mmstar.summary.json (OUT_DIR defaults to
# outputs/eval/<basename of MODEL_PATH>); settings and switches: see run_benchmark.sh.
#
# Data: MMSTAR_DATA, default zli12321/mmstar@test: the hub copy the Vision-SR1 reference evaluates
# (github.com/zli12321/Vision-SR1, evaluation/full_rl/eval_vision_sr1.sh: data.val_files=<name>@test,
# prompt_key=problem, answer_key=answer, image_key=images).
# NOT verified from this environment (no hub access): before a run, check that the dataset
# exists, has that split and the columns problem (question with <image>), answer and images,
# or point MMSTAR_DATA at a local parquet/jsonl or name@split with those columns (set
# PROMPT_KEY/ANSWER_KEY/IMAGE_KEY for other column names).
#
# Scoring: rule-based (multiple choice). MMStar is the reference's validation set during training.
set -euo pipefail

MODEL_PATH=${1:?usage: bash validation_examples/mmstar.sh MODEL_PATH [OUT_DIR]}
MMSTAR_DATA=${MMSTAR_DATA:-zli12321/mmstar@test}
exec bash "$(dirname "$0")/run_benchmark.sh" mmstar "$MMSTAR_DATA" "$MODEL_PATH" "${2:-}"
