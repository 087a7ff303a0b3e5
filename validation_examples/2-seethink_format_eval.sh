#!/usr/bin/env bash
# The paper's evaluation (the reference's command name): every benchmark of the Vision-SR1 table with
# the see-think format prompt, greedy, then one aggregate table. A thin entry to `python3 -m verl.eval.suite`.
#
#   bash validation_examples/2-seethink_format_eval.sh MODEL [BENCHMARKS...]
#   bash validation_examples/2-seethink_format_eval.sh --help        (this text; every option: python3 -m verl.eval.suite --help)
#
# MODEL: a model folder (a merged checkpoint: scripts/model_merger.py) or a hub id when online.
# BENCHMARKS (default all): MMMU mmmu_pro_10options mmmu-pro-vision mm-vet realWorldQA visnumbench
# mathverse mathvision hallusionbench mathvista mmstar (mmmu_pro = both MMMU-Pro settings). Data: the
# hub copies the reference loads (zli12321/NAME@test) or, offline, local copies DATA_DIR/NAME.parquet|jsonl|json.
# Writes OUT_DIR/responses/NAME.jsonl (the reference's file names and records; re-running resumes),
# OUT_DIR/blank_image/, OUT_DIR/scored/ and OUT_DIR/aggregate.{json,txt}; see docs/eval.md.
#
# Environment (unset = the reference's evaluation settings: greedy, 4096-token responses, 12800-token
# prompts, 262144..4194304 pixels):
#   OUT_DIR      outputs/eval/<basename of MODEL>      DATA_DIR   local benchmark copies (offline)
#   ENGINE       vllm (hf on a CPU machine)            TP         vLLM tensor-parallel size (1)
#   LIMIT        first N prompts per benchmark          MAX_RESPONSE_LENGTH   4096
#   JUDGE_MODEL  a local judge model folder (a Qwen2.5-VL-Instruct; run by the same engine after the model)
#   ANSWER_JUDGE_BASE_URL, ANSWER_JUDGE_MODEL   or an OpenAI-compatible judge server (e.g. `vllm serve
#                Qwen/Qwen2.5-14B-Instruct`, the reference's judge); key from $OPENAI_API_KEY, never a file
#   PYTHON       the project venv (.venv/bin/python) when present, else python3
# Anything else: SUITE_ARGS="--grader mathruler --no_blank_control ..." (python3 -m verl.eval.suite --help).
set -euo pipefail
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/find_python.sh"
source "$REPO_ROOT/scripts/help.sh" "$@"
if [[ $# -eq 0 ]]; then
  echo "usage: bash validation_examples/2-seethink_format_eval.sh MODEL [BENCHMARKS...] (--help: every option)" >&2
  exit 2
fi
MODEL=$1
shift
args=(--model_path "$MODEL" --format_prompt "$REPO_ROOT/configs/format_prompt/see_think.jinja"
      --engine "${ENGINE:-vllm}" --tensor_parallel_size "${TP:-1}"
      --max_response_length "${MAX_RESPONSE_LENGTH:-4096}")
if [[ $# -gt 0 ]]; then args+=(--benchmarks "$@"); fi
if [[ -n ${OUT_DIR:-} ]]; then args+=(--out_dir "$OUT_DIR"); fi
if [[ -n ${DATA_DIR:-} ]]; then args+=(--data_dir "$DATA_DIR"); fi
if [[ -n ${LIMIT:-} ]]; then args+=(--limit "$LIMIT"); fi
if [[ -n ${JUDGE_MODEL:-} ]]; then args+=(--answer_judge_model_path "$JUDGE_MODEL"); fi
if [[ -n ${ANSWER_JUDGE_BASE_URL:-} ]]; then
  args+=(--answer_judge_base_url "$ANSWER_JUDGE_BASE_URL" --answer_judge_model "${ANSWER_JUDGE_MODEL:?set ANSWER_JUDGE_MODEL}")
fi
export PYTHONUNBUFFERED=1
# shellcheck disable=SC2086
exec "$PYTHON" -m verl.eval.suite "${args[@]}" ${SUITE_ARGS:-}
