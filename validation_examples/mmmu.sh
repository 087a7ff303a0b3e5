#!/usr/bin/env bash
# MMMU with vLLM on a GPU node: responses, scores and a summary.
#
#   bash validation_examples/mmmu.sh MODEL_PATH [OUT_DIR]
#
# Writes OUT_DIR/mmmu.jsonl, mmmu.scored.jsonl and mmmu.summary.json (OUT_DIR defaults to
# outputs/eval/<basename of MODEL_PATH>); settings and switches: see run_benchmark.sh.
#
# Data: MMMU_DATA, default zli12321/MMMU@test: the hub copy the Vision-SR1 reference evaluates
# (github.com/zli12321/Vision-SR1, evaluation/full_rl/eval_vision_sr1.sh: data.val_files=<name>@test,
# prompt_key=problem, answer_key=answer, image_key=images).
# NOT verified from this environment (no hub access): before a run, check that the dataset
# exists, has that split and the columns problem (question with <image>), answer and images,
# or point MMMU_DATA at a local parquet/jsonl or name@split with those columns (set
# PROMPT_KEY/ANSWER_KEY/IMAGE_KEY for other column names).
#
# Scoring: rule-based; the reference scored MMMU by string matching (multiple choice).
set -euo pipefail

MODEL_PATH=${1:?usage: bash validation_examples/mmmu.sh MODEL_PATH [OUT_DIR]}
MMMU_DATA=${MMMU_DATA:-zli12321/MMMU@test}
exec bash "$(dirname "$0")/run_benchmark.sh" mmmu "$MMMU_DATA" "$MODEL_PATH" "${2:-}"
