#!/usr/bin/env bash
# MMMU-Pro with vLLM on a GPU node: the 10-option (standard) and the vision (question in the image)
# settings, each with responses, scores and a summary, then their n-weighted accuracy.
#
#   bash validation_examples/mmmu_pro.sh MODEL_PATH [OUT_DIR]
#
# Writes OUT_DIR/mmmu_pro_10options.* and OUT_DIR/mmmu_pro_vision.* (.jsonl, .scored.jsonl,
# .summary.json); OUT_DIR defaults to outputs/eval/<basename of MODEL_PATH>; settings and
# switches: see run_benchmark.sh.
#
# Data: MMMU_PRO_10_DATA, default zli12321/mmmu_pro_10options@test, and MMMU_PRO_VISION_DATA,
# default zli12321/mmmu-pro-vision@test: the hub copies the Vision-SR1 reference evaluates
# (github.com/zli12321/Vision-SR1, evaluation/full_rl/eval_vision_sr1.sh: data.val_files=<name>@test,
# prompt_key=problem, answer_key=answer, image_key=images).
# NOT verified from this environment (no hub access): before a run, check that the datasets
# exist, have that split and the columns problem (question with <image>), answer and images,
# or point the variables at local parquet/jsonl files or name@split with those columns (set
# PROMPT_KEY/ANSWER_KEY/IMAGE_KEY for other column names).
#
# Scoring: rule-based; the reference scored both by string matching (multiple choice). Its
# "weighted_mmmu_pro" is the n-weighted mean of its MMMU-Pro subsets, which also included a
# 4-option subset inside zli12321/MLLM_test (file_name "mmmu-pro"); the weighted figure printed
# here covers the two subsets above only.
set -euo pipefail

MODEL_PATH=${1:?usage: bash validation_examples/mmmu_pro.sh MODEL_PATH [OUT_DIR]}
OUT_DIR=${2:-outputs/eval/$(basename "$MODEL_PATH")}
MMMU_PRO_10_DATA=${MMMU_PRO_10_DATA:-zli12321/mmmu_pro_10options@test}
MMMU_PRO_VISION_DATA=${MMMU_PRO_VISION_DATA:-zli12321/mmmu-pro-vision@test}
HERE=$(dirname "$0")

bash "$HERE/run_benchmark.sh" mmmu_pro_10options "$MMMU_PRO_10_DATA" "$MODEL_PATH" "$OUT_DIR"
bash "$HERE/run_benchmark.sh" mmmu_pro_vision "$MMMU_PRO_VISION_DATA" "$MODEL_PATH" "$OUT_DIR"

"${PYTHON:-python3}" - "$OUT_DIR/mmmu_pro_10options.summary.json" "$OUT_DIR/mmmu_pro_vision.summary.json" <<'PY'
import json
import sys

subsets = [json.load(open(path))["overall"] for path in sys.argv[1:]]
total = sum(subset["n"] for subset in subsets)
weighted = sum(subset["n"] * subset["accuracy"] for subset in subsets) / total
print(f"MMMU-Pro (10 options + vision), n-weighted accuracy over {total} responses: {100 * weighted:.1f}%")
PY
