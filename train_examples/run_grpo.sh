#!/usr/bin/env bash
# Shared launcher of the GPU recipes: `python3 -m verl.trainer.main` on $CONFIG with the
# environment overrides below. Each numbered script sets its CONFIG and calls this.
#
# Environment overrides (unset = the config's value):
#   MODEL_PATH  starting policy (default: the config's cold-start SFT output folder)
#   DATA        training set: hub name@split, a parquet/jsonl/json file, or DIR@split
#   VAL_DATA    validation set, same forms; VAL_DATA= (empty) turns validation off
#   EXP_NAME    run name: logger name and checkpoints/vision_sr1/$EXP_NAME
#   CONFIG      the config file
# Trailing key=value arguments override any config key, e.g. trainer.max_steps=10 trainer.logger=[console,file].
#   PYTHON      the interpreter (default: the project's .venv/bin/python when present, else python3;
#               scripts/find_python.sh), so no activated venv is needed
# Run on a node with 8 GPUs; rerunning the same command resumes from the last checkpoint.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/help.sh" "$@"
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/find_python.sh

args=("config=${CONFIG:?CONFIG must name a config file}")
if [[ -n ${MODEL_PATH:-} ]]; then args+=("worker.actor.model.model_path=$MODEL_PATH"); fi
if [[ -n ${DATA:-} ]]; then args+=("data.train_files=$DATA"); fi
if [[ -v VAL_DATA ]]; then args+=("data.val_files=${VAL_DATA:-''}"); fi
if [[ -n ${EXP_NAME:-} ]]; then args+=("trainer.experiment_name=$EXP_NAME"); fi

export PYTHONUNBUFFERED=1
"$PYTHON" -m verl.trainer.main "${args[@]}" "$@"
