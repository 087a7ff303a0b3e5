"""`validation_examples/2-seethink_format_eval.sh` end to end on the tiny model, every benchmark of the paper.

Fixture files are written in the schema of the hub copies the reference evaluates
(zli12321/<name>@test: `problem` with `<image>`, `answer`, `images` as a list of images), two rows
each, as local copies (DATA_DIR/<name>.parquet, one as a DIR/test.parquet folder).
"""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from verl.eval.suite import BENCHMARKS, MMMU_PRO, aggregate, select_benchmarks

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "validation_examples" / "2-seethink_format_eval.sh"
ROWS = 2
# The tiny checkpoint's pixel range; 6 new tokens keep the 11 benchmarks x (answer, blank image, re-answer) fast.
TINY_ARGS = (
    "--dtype float32 --min_pixels 3136 --max_pixels 12544 --max_prompt_length 1024 --batch_size 64 --skip_bad_rows"
)


def _png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (56, 56, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _write_benchmark(path: Path, name: str, bad_rows: int = 0) -> list[str]:
    """ROWS good rows, then `bad_rows` whose image bytes are not an image."""
    total = ROWS + bad_rows
    problems = [f"<image>{name} question {i}: which option?\nA. red\nB. blue" for i in range(total)]
    answers = ["A" if i % 2 == 0 else "B" for i in range(total)]
    table = pa.table({
        "problem": problems,
        "answer": answers,
        "images": [[{"bytes": _png(i) if i < ROWS else b"not an image", "path": None}] for i in range(total)],
    })
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return answers


@pytest.fixture(scope="module")
def benchmark_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("benchmarks")
    for benchmark in BENCHMARKS:
        if benchmark.name == "mathvista":  # the DIR@test form of a local copy
            _write_benchmark(root / "mathvista" / "test.parquet", benchmark.name)
        elif benchmark.name == "hallusionbench":  # a row with an undecodable image: left out, counted
            _write_benchmark(root / f"{benchmark.name}.parquet", benchmark.name, bad_rows=1)
        else:
            _write_benchmark(root / f"{benchmark.name}.parquet", benchmark.name)
    return root


def _run(model: str, out_dir: Path, data_dir: Path, *benchmarks: str, extra: str = "", offline: bool = False):
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "PYTHONPATH": str(REPO),
        "ENGINE": "hf",
        "OUT_DIR": str(out_dir),
        "DATA_DIR": str(data_dir),
        "MAX_RESPONSE_LENGTH": "6",
        "SUITE_ARGS": f"{TINY_ARGS} --no_progress {extra}",
        "TOKENIZERS_PARALLELISM": "false",
    }
    if offline:
        env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    return subprocess.run(
        ["bash", str(SCRIPT), model, *benchmarks], env=env, capture_output=True, text=True, timeout=600
    )


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.e2e
def test_eval_suite_end_to_end_resumes_and_aggregates(tiny_model_dir, benchmark_dir, tmp_path):
    out_dir = tmp_path / "eval"
    first = _run(tiny_model_dir, out_dir, benchmark_dir)
    assert first.returncode == 0, first.stderr[-3000:]
    for benchmark in BENCHMARKS:
        assert benchmark.name in first.stdout
        responses = _records(out_dir / "responses" / f"{benchmark.name}.jsonl")
        assert len(responses) == ROWS
        assert {"prompt", "response", "ground_truth"} <= set(responses[0])  # the reference's judge reads these
        assert len(_records(out_dir / "blank_image" / f"{benchmark.name}.jsonl")) == ROWS
    assert "MMMU-Pro (weighted)" in first.stdout and "Average (10)" in first.stdout
    # Only response files live under responses/: the reference's judge globs **/*.jsonl there.
    assert sorted(p.name for p in (out_dir / "responses").glob("**/*.jsonl")) == sorted(
        f"{b.name}.jsonl" for b in BENCHMARKS
    )

    # Plant a correct answer in one response, then rerun with a local judge model: nothing is
    # regenerated (resume), the planted answer is scored, and the judge's failures count as errors.
    mmstar = out_dir / "responses" / "mmstar.jsonl"
    records = _records(mmstar)
    records[0]["response"] = f"<description>d</description><think>t</think>\\boxed{{{records[0]['ground_truth']}}}"
    mmstar.write_text("".join(json.dumps(record) + "\n" for record in records))
    second = _run(tiny_model_dir, out_dir, benchmark_dir, extra=f"--answer_judge_model_path {tiny_model_dir}")
    assert second.returncode == 0, second.stderr[-3000:]
    assert _records(mmstar) == records
    table = json.loads((out_dir / "aggregate.json").read_text())
    assert table["answer_judge"] == f"local:{tiny_model_dir}"
    for benchmark in BENCHMARKS:
        scored = _records(out_dir / "scored" / f"{benchmark.name}.jsonl")
        row = table["benchmarks"][benchmark.name]
        assert row["n"] == ROWS
        assert row["accuracy"] == pytest.approx(np.mean([record["score"] for record in scored]))
        # The random tiny judge never writes a verdict: every judged answer is an error, none correct.
        wrong = [record for record in scored if record["score"] != 1.0]
        assert row["answer_judge_error"] == pytest.approx(len(wrong) / ROWS)
        assert row["judged_accuracy"] == pytest.approx(row["accuracy"])
        assert {"format", "perception_sufficient", "language_shortcut", "accuracy_blank_image"} <= set(row)
    assert table["benchmarks"]["mmstar"]["accuracy"] == pytest.approx(0.5)
    assert table["benchmarks"]["hallusionbench"]["n_skipped_rows"] == 1
    assert "rows left out (--skip_bad_rows; responses/NAME.skipped.json): hallusionbench 1" in second.stdout
    pro = [table["benchmarks"][name] for name in MMMU_PRO]
    expected_pro = sum(r["n"] * r["accuracy"] for r in pro) / sum(r["n"] for r in pro)
    assert table["mmmu_pro_weighted"]["accuracy"] == pytest.approx(expected_pro)
    counted = [row["accuracy"] for name, row in table["benchmarks"].items() if name not in MMMU_PRO]
    assert table["average"]["accuracy"] == pytest.approx(np.mean(counted + [expected_pro]))
    assert table["average"]["benchmarks"] == 10
    assert (out_dir / "aggregate.txt").read_text().splitlines()[0] in second.stdout


def test_missing_benchmark_offline_fails_in_one_line(tiny_model_dir, tmp_path, monkeypatch):
    from verl.eval.suite import SuiteError, main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(SuiteError) as error:
        main(["--model_path", tiny_model_dir, "--benchmarks", "mathvista", "--data_dir", str(tmp_path),
              "--out_dir", str(tmp_path / "eval"), "--engine", "hf"])
    message = str(error.value)
    assert message.startswith("benchmark mathvista: the hub is unreachable (offline)") and "\n" not in message
    assert f"{tmp_path}/mathvista.parquet" in message and "--data mathvista=SOURCE" in message


def test_benchmark_names_and_aliases():
    assert [b.name for b in select_benchmarks(["mmmu_pro", "MM_VET", "realworldqa"])] == [
        "mmmu_pro_10options", "mmmu-pro-vision", "mm-vet", "realWorldQA"
    ]
    with pytest.raises(ValueError, match="unknown benchmark 'pope'"):
        select_benchmarks(["pope"])


def test_aggregate_weights_mmmu_pro_by_n_and_counts_it_once():
    summaries = {
        "MMMU": {"overall": {"n": 10, "accuracy": 0.5}},
        "mmmu_pro_10options": {"overall": {"n": 30, "accuracy": 0.2}},
        "mmmu-pro-vision": {"overall": {"n": 10, "accuracy": 0.6}},
    }
    table = aggregate(summaries)
    assert table["mmmu_pro_weighted"] == {"n": 40, "accuracy": pytest.approx(0.3)}
    assert table["average"]["accuracy"] == pytest.approx((0.5 + 0.3) / 2)
    assert table["average"]["benchmarks"] == 2


def test_aggregate_never_averages_counts():
    summaries = {
        "MMMU": {"overall": {"n": 2, "accuracy": 1.0}, "n_skipped_rows": 3},
        "mmstar": {"overall": {"n": 2, "accuracy": 0.0}, "n_skipped_rows": 0},
    }
    table = aggregate(summaries)
    assert table["benchmarks"]["MMMU"]["n_skipped_rows"] == 3
    assert set(table["average"]) == {"benchmarks", "n", "accuracy"} and table["average"]["accuracy"] == 0.5
