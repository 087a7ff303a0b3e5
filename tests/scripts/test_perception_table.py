"""scripts/perception_table.py on a hand-made sweep folder: means over seeds, the median step time,
the change against the `none` arm with its standard error, and the per-seed JSON."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "perception_table.py"
SFT = {"accuracy": 0.6, "accuracy_on_distractors": 0.4, "perception_sufficient": 0.5,
       "language_shortcut": 0.3, "accuracy_blank_image": 0.2, "vision_reliance": 0.5}


def _run(root: Path, name: str, grpo: dict | None, step_seconds: list[float] = ()) -> None:
    """A run folder as the recipe leaves it: summary.json (GRPO stage absent while unfinished)
    and grpo/metrics.jsonl (one record per step, and a validation record without timing)."""
    stages = {"after cold-start SFT": SFT}
    if grpo is not None:
        stages["after GRPO"] = {**SFT, **grpo}
    (root / name / "grpo").mkdir(parents=True)
    (root / name / "summary.json").write_text(json.dumps({"stages": stages}))
    records = [{"step": 0, "val/reward/accuracy": 0.6}] + [{"step": i + 1, "timing_s/step": s} for i, s in enumerate(step_seconds)]
    (root / name / "grpo" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_table_means_step_time_and_difference_to_none(tmp_path):
    _run(tmp_path, "none_seed1", {"language_shortcut": 0.30, "vision_reliance": 0.50}, [1.0, 3.0, 2.0])
    _run(tmp_path, "none_seed2", {"language_shortcut": 0.34, "vision_reliance": 0.54}, [4.0])
    _run(tmp_path, "papo_seed1", {"language_shortcut": 0.10, "vision_reliance": 0.80}, [5.0])
    _run(tmp_path, "papo_seed2", {"language_shortcut": 0.12, "vision_reliance": 0.82}, [7.0])
    _run(tmp_path, "sr_summed_seed1", {"language_shortcut": 0.20, "vision_reliance": 0.90}, [2.0])
    _run(tmp_path, "sr_summed_seed2", None)  # still training: not counted
    done = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "| cold-start SFT (shared) | 60.0 | 40.0 | 50.0 | 30.0 | 20.0 | 50.0 | - |" in out
    assert "| none (1, 2) | 60.0 ± 0.0 | 40.0 ± 0.0 | 50.0 ± 0.0 | 32.0 ± 2.0 | 20.0 ± 0.0 | 52.0 ± 2.0 | 3.0 ± 1.0 |" in out
    assert "| sr_summed (1) |" in out and "sr_summed | 2 |" not in out
    # papo - none: shortcut -21 points, reliance +29, each SE sqrt(0.0002/2 + 0.0008/2) = 2.2 points (sample variances)
    assert "| papo | -21.0 ± 2.2 | +29.0 ± 2.2 | yes |" in out
    assert "| sr_summed | -12.0 | +38.0 | no |" in out  # one seed: no standard error, no claim
    assert "| none | 1 | 60.0 | 40.0 | 50.0 | 30.0 | 20.0 | 50.0 | 2.00 |" in out

    saved = json.loads((tmp_path / "perception.json").read_text())
    assert saved["runs"]["papo"]["2"]["language_shortcut"] == 0.12
    assert saved["runs"]["none"]["1"]["median_step_s"] == 2.0
    assert saved["sft"]["accuracy"] == 0.6
    assert saved["vs_none"]["papo"]["vision_reliance"]["se"] == pytest.approx(0.0005 ** 0.5)
    assert saved["vs_none"]["papo"]["language_shortcut"]["beyond_2se_in_better_direction"] is True
