"""scripts/per_type_table.py on a hand-made sweep folder: per question type, GRPO's seeds against
the shared SFT start, flagged only when below it by more than 2 standard errors."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))

from per_type_table import compare  # noqa: E402


def write_summary(path: Path, accuracy: dict[str, float], n: int = 100) -> None:
    path.mkdir(parents=True, exist_ok=True)
    groups = {"question_type": {kind: {"accuracy": value, "n_prompts": n} for kind, value in accuracy.items()}}
    (path / "val.summary.json").write_text(json.dumps({"overall": {}, "groups": groups}))


def test_a_drop_beyond_two_standard_errors_is_flagged_and_noise_is_not(tmp_path):
    for seed, (color, shape) in enumerate([(0.60, 0.79), (0.62, 0.81), (0.58, 0.80)], 1):
        write_summary(tmp_path / f"grpo_seed{seed}" / "eval_sft", {"color": 0.90, "shape": 0.78})
        write_summary(tmp_path / f"grpo_seed{seed}" / "eval_grpo", {"color": color, "shape": shape})
    output = subprocess.run([sys.executable, "scripts/per_type_table.py", str(tmp_path)], cwd=REPO, check=True,
                            capture_output=True, text=True).stdout
    assert "| grpo (3 seeds) | color (n=100) | 90.0 | 60.0 | -30.0 |" in output and "**yes**" in output
    assert "| grpo (3 seeds) | shape (n=100) | 78.0 | 80.0 | +2.0 |" in output
    table = json.loads((tmp_path / "per_type.json").read_text())["table"]["grpo"]
    assert table["color"]["z"] < -2 < table["shape"]["z"]


def test_the_standard_error_adds_both_sides_binomial_noise_and_the_seed_spread():
    row = compare((0.5, 100), [(0.4, 100), (0.6, 100)])
    binomial = 0.25 / 100 + 0.25 / 100
    seeds = 0.02 / 2  # sample variance of (0.4, 0.6) over 2 seeds
    assert abs(row["se"] - (binomial + seeds) ** 0.5) < 1e-12 and row["difference"] == 0.0
