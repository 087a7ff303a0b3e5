"""scripts/description_accuracy.py on hand-made evaluation files of the scenes val split."""

import json
import subprocess
import sys
from pathlib import Path

from verl.toy.scenes import describe, generate_split

REPO_ROOT = Path(__file__).resolve().parents[2]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO_ROOT / "scripts/description_accuracy.py"), *args],
                          capture_output=True, text=True, cwd=REPO_ROOT)


def test_reference_descriptions_score_100_and_a_missing_one_scores_0(tmp_path):
    samples = generate_split(4, seed=0, split="val")
    rows = [{"dataset_index": i, "problem": s.question,
             "response": f"<description> {describe(s)} </description> \\boxed{{{s.answer}}}" if i < 3 else "\\boxed{no}"}
            for i, s in enumerate(samples)]
    path = tmp_path / "val.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = run("--task", "scenes", "--seed", "0", "--val", "4", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == f"| {path} | 4 | 75.0 | 75.0 | 75.0 | 75.0 | 75.0 | 75.0 |"


def test_a_file_from_another_split_is_named_with_its_line(tmp_path):
    path = tmp_path / "val.jsonl"
    path.write_text(json.dumps({"dataset_index": 1, "problem": "What is in the picture?", "response": ""}) + "\n")
    result = run("--task", "scenes", "--seed", "0", "--val", "2", str(path))
    assert result.returncode != 0 and f"{path}:1: question" in result.stderr
