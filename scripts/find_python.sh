# Sourced by the shell entry points (`source .../scripts/find_python.sh`): sets and exports PYTHON,
# unless the caller set it, to the project's venv (REPO/.venv/bin/python, what setup.sh builds) when
# it exists, else python3, so the scripts work without an activated venv from any directory.
if [[ -z ${PYTHON:-} ]]; then
  _repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  if [[ -x $_repo_root/.venv/bin/python ]]; then PYTHON=$_repo_root/.venv/bin/python; else PYTHON=python3; fi
  unset _repo_root
fi
export PYTHON
