"""The prepared GPU check (benchmarks/gpu_engine.py) starts and finishes in its CPU smoke mode, so
the first GPU session spends its minutes measuring, not debugging the script."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_gpu_engine_smoke_mode_measures_every_path_the_rollout_and_checks_flex(tmp_path):
    out = tmp_path / "gpu_engine.json"
    subprocess.run(
        [sys.executable, "benchmarks/gpu_engine.py", "--device", "cpu", "--size", "tiny", "--prompt", "48", "--n", "2",
         "--response", "16", "--rollout_response", "8", "--out", str(out)],
        cwd=REPO, check=True, capture_output=True, text=True, timeout=600,
    )
    result = json.loads(out.read_text())
    measured = {(row["path"], row["pass"]) for row in result["rows"]}
    # CPU: every path's log-prob pass, the update where a backward exists (not flex).
    assert measured == {("unpacked", "log_probs"), ("unpacked", "update"), ("dense", "log_probs"),
                        ("dense", "update"), ("segments", "log_probs"), ("segments", "update"), ("flex", "log_probs"),
                        ("decode_loop", "rollout"), ("generate", "rollout")}
    assert all(row["seconds"] > 0 and row["estimate_gib"] > 0 for row in result["rows"] if row["pass"] != "rollout")
    assert result["flex_exactness"]["max_abs_difference"] < 1e-4
