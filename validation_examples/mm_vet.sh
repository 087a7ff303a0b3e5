#!/usr/bin/env bash
# MM-Vet with vLLM on a GPU node: responses, scores and a summary.
#
#   bash validation_examples/mm_vet.sh MODEL_PATH [OUT_DIR]
#
# Writes OUT_DIR/mm_vet.jsonl, mm_vet.scored.jsonl and mm_vet.summary.json (OUT_DIR defaults to
# outputs/eval/<basename of MODEL_PATH>); settings and switches: see run_benchmark.sh.
#
# Data: MM_VET_DATA, default zli12321/mm-vet@test: the hub copy the Vision-SR1 reference evaluates
# (github.com/zli12321/Vision-SR1, evaluation/full_rl/eval_vision_sr1.sh: data.val_files=<name>@test,
# prompt_key=problem, answer_key=answer, image_key=images).
# NOT verified from this environment (no hub access): before a run, check that the dataset
# exists, has that split and the columns problem (question with <image>), answer and images,
# or point MM_VET_DATA at a local parquet/jsonl or name@split with those columns (set
# PROMPT_KEY/ANSWER_KEY/IMAGE_KEY for other column names).
#
# MM-Vet answers are open-ended: the reference judged them with an LLM (Gemini per its README;
# its later scripts run Qwen2.5-14B-Instruct under vLLM), a binary correct/incorrect verdict on
# the \boxed{} answer. This script needs such a judge: an OpenAI-compatible server in
# ANSWER_JUDGE_BASE_URL (e.g. a vLLM server, http://127.0.0.1:8000/v1) and ANSWER_JUDGE_MODEL; the
# key comes from the variable named by ANSWER_JUDGE_API_KEY_ENV (default OPENAI_API_KEY). Judge
# failures count as wrong and are reported (answer_judge_error). The official MM-Vet metric is a
# GPT-4 graded 0-1 score per sample: numbers from this script follow the reference's binary
# protocol and are not leaderboard MM-Vet scores.
set -euo pipefail

MODEL_PATH=${1:?usage: bash validation_examples/mm_vet.sh MODEL_PATH [OUT_DIR]}
MM_VET_DATA=${MM_VET_DATA:-zli12321/mm-vet@test}
: "${ANSWER_JUDGE_BASE_URL:?MM-Vet needs an LLM judge: set ANSWER_JUDGE_BASE_URL and ANSWER_JUDGE_MODEL}"
: "${ANSWER_JUDGE_MODEL:?set ANSWER_JUDGE_MODEL, the judge model name on that server}"
exec bash "$(dirname "$0")/run_benchmark.sh" mm_vet "$MM_VET_DATA" "$MODEL_PATH" "${2:-}"
