"""verl.eval.generate on the tiny Qwen2.5-VL with the HF engine and the synthetic val split."""

import json
import os

import datasets
import pandas as pd
import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

from verl.toy.synthetic import write_synthetic_dataset
from verl.eval.generate import (
    DEFAULT_FORMAT_PROMPT,
    GenerationSettings,
    build_dataset,
    completed_indices,
    generate_to_file,
    is_json_feature,
    main,
    parse_args,
)
from verl.toy.tiny_model import TinyModelSpec
from verl.workers.rollout import SamplingConfig
from verl.workers.rollout.hf import HFRolloutEngine

SPEC = TinyModelSpec()
MAX_TOKENS = 6
GREEDY = SamplingConfig(n=1, temperature=0.0, max_tokens=MAX_TOKENS)
PROMISED_KEYS = {"dataset_index", "prompt", "response", "ground_truth", "problem"}


class CountingHFEngine(HFRolloutEngine):
    """The real HF engine, counting its generate() calls and the prompts of each."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.call_sizes: list[int] = []

    def generate(self, requests, sampling):
        self.call_sizes.append(len(requests))
        return super().generate(requests, sampling)


@pytest.fixture(scope="module")
def val_path(tmp_path_factory) -> str:
    out_dir = tmp_path_factory.mktemp("shapes")
    return write_synthetic_dataset(str(out_dir), DEFAULT_FORMAT_PROMPT, train_size=8, val_size=8, sft_size=8).val


@pytest.fixture(scope="module")
def engine(tiny_model_dir) -> CountingHFEngine:
    return CountingHFEngine(tiny_model_dir, min_pixels=SPEC.min_pixels, max_pixels=SPEC.max_pixels)


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def dataset(tiny_model_dir, val_path, tokenizer):
    settings = GenerationSettings(
        model_path=tiny_model_dir,
        data=val_path,
        format_prompt=DEFAULT_FORMAT_PROMPT,
        system_prompt=None,
        prompt_key="problem",
        answer_key="answer",
        image_key="images",
        min_pixels=SPEC.min_pixels,
        max_pixels=SPEC.max_pixels,
        max_prompt_length=1024,
        skip_overlong_prompts=False,
        n=1,
        temperature=0.0,
        top_p=1.0,
        top_k=-1,
        max_response_length=MAX_TOKENS,
        seed=0,
    )
    return build_dataset(settings, tokenizer, AutoProcessor.from_pretrained(tiny_model_dir))


def read_jsonl(path) -> list[dict]:
    with open(path, encoding="utf-8") as file:
        return [json.loads(line) for line in file]


def test_one_record_per_prompt_with_the_promised_keys(engine, dataset, tokenizer, val_path, tmp_path):
    output = str(tmp_path / "out.jsonl")
    engine.call_sizes.clear()
    report = generate_to_file(engine, dataset, tokenizer, output, GREEDY, batch_size=3, show_progress=False)

    # 8 prompts in batches of 3: every batch is exactly one engine call.
    assert engine.call_sizes == [3, 3, 2]
    assert (report.prompts_generated, report.responses_written, report.engine_calls) == (8, 8, 3)
    records = read_jsonl(output)
    table = pd.read_parquet(val_path)
    assert [record["dataset_index"] for record in records] == list(range(8))
    for record, (_, row) in zip(records, table.iterrows()):
        assert PROMISED_KEYS <= set(record)
        assert record["ground_truth"] == row["answer"]
        assert record["problem"] == row["problem"].replace("<image>", "")
        assert record["question_type"] == row["question_type"]
        assert record["distractor"] == bool(row["distractor"])
        assert record["problem"] in record["prompt"] and "<description>" in record["prompt"]
        assert 1 <= record["response_length"] <= MAX_TOKENS
        if record["response_length"] < MAX_TOKENS:
            assert record["finished"], "a response shorter than the budget stopped at a stop token"
        assert record["sample_index"] == 0


def test_greedy_generation_is_deterministic(engine, dataset, tokenizer, tmp_path):
    first, second = str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")
    generate_to_file(engine, dataset, tokenizer, first, GREEDY, batch_size=4, limit=4, show_progress=False)
    generate_to_file(engine, dataset, tokenizer, second, GREEDY, batch_size=4, limit=4, show_progress=False)
    responses = [record["response"] for record in read_jsonl(first)]
    assert responses == [record["response"] for record in read_jsonl(second)]
    assert len(set(responses)) > 1, "different images/questions should give different greedy text"


def test_resume_skips_prompts_already_in_the_output(engine, dataset, tokenizer, tmp_path):
    output = str(tmp_path / "out.jsonl")
    generate_to_file(engine, dataset, tokenizer, output, GREEDY, batch_size=8, limit=3, show_progress=False)
    # Mark the finished records: a regenerated prompt would not carry the marker.
    marked = [{**record, "response": "MARKER"} for record in read_jsonl(output)]
    with open(output, "w", encoding="utf-8") as file:
        file.writelines(json.dumps(record) + "\n" for record in marked)

    engine.call_sizes.clear()
    report = generate_to_file(engine, dataset, tokenizer, output, GREEDY, batch_size=8, show_progress=False)

    assert engine.call_sizes == [5]
    assert (report.prompts_skipped, report.prompts_generated) == (3, 5)
    records = read_jsonl(output)
    assert [record["dataset_index"] for record in records] == list(range(8))
    assert [record["response"] == "MARKER" for record in records] == [True] * 3 + [False] * 5


def write_lines(path, lines: list[str], tail: str = "") -> None:
    with open(path, "w", encoding="utf-8") as file:
        file.write("".join(line + "\n" for line in lines) + tail)


def record_line(index: int, sample: int = 0) -> str:
    return json.dumps({"dataset_index": index, "sample_index": sample, "response": f"r{index}.{sample}"})


def test_a_torn_last_line_is_cut_off(tmp_path):
    output = str(tmp_path / "out.jsonl")
    write_lines(output, [record_line(0), record_line(1)], tail='{"dataset_index": 2, "respo')
    assert completed_indices(output, n=1) == {0, 1}
    with open(output, encoding="utf-8") as file:
        assert file.read() == record_line(0) + "\n" + record_line(1) + "\n"


def test_a_prompt_with_fewer_than_n_samples_is_removed(tmp_path):
    output = str(tmp_path / "out.jsonl")
    write_lines(output, [record_line(0, 0), record_line(0, 1), record_line(1, 0)])
    assert completed_indices(output, n=2) == {0}
    assert [json.loads(line)["dataset_index"] for line in open(output, encoding="utf-8")] == [0, 0]


def test_damaged_or_mixed_outputs_are_refused(tmp_path):
    damaged = str(tmp_path / "damaged.jsonl")
    write_lines(damaged, [record_line(0), "not json", record_line(1)])
    with pytest.raises(ValueError, match="damaged.jsonl line 2"):
        completed_indices(damaged, n=1)
    mixed = str(tmp_path / "mixed.jsonl")
    write_lines(mixed, [record_line(0), record_line(0)])
    with pytest.raises(ValueError, match=r"dataset_index \[0\] has more than n=1"):
        completed_indices(mixed, n=1)


@pytest.fixture(scope="module")
def blind_model_dir(tiny_model_dir, tmp_path_factory) -> str:
    """The tiny model with its vision merger's output layer zeroed: every image becomes the same
    (zero) vision tokens, so no answer can depend on what an image shows."""
    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        model.model.visual.merger.mlp[-1].weight.zero_()
        model.model.visual.merger.mlp[-1].bias.zero_()
    out_dir = str(tmp_path_factory.mktemp("blind_tiny"))
    model.save_pretrained(out_dir)
    AutoProcessor.from_pretrained(tiny_model_dir).save_pretrained(out_dir)
    return out_dir


def test_blank_images_reach_the_engine(engine, dataset, tokenizer, tmp_path):
    """The random tiny model reacts to pixels: blanking the images changes some greedy responses."""
    real, blank = str(tmp_path / "real.jsonl"), str(tmp_path / "blank.jsonl")
    generate_to_file(engine, dataset, tokenizer, real, GREEDY, batch_size=8, show_progress=False)
    generate_to_file(engine, dataset, tokenizer, blank, GREEDY, batch_size=8, show_progress=False, blank_images=True)
    pairs = list(zip(read_jsonl(real), read_jsonl(blank)))
    assert all(a["dataset_index"] == b["dataset_index"] for a, b in pairs)
    assert sum(a["response"] != b["response"] for a, b in pairs) > 0


def test_a_blind_model_answers_the_same_with_blank_images(blind_model_dir, dataset, tokenizer, tmp_path):
    engine = HFRolloutEngine(blind_model_dir, min_pixels=SPEC.min_pixels, max_pixels=SPEC.max_pixels)
    real, blank = str(tmp_path / "real.jsonl"), str(tmp_path / "blank.jsonl")
    generate_to_file(engine, dataset, tokenizer, real, GREEDY, batch_size=8, show_progress=False)
    generate_to_file(engine, dataset, tokenizer, blank, GREEDY, batch_size=8, show_progress=False, blank_images=True)
    assert [r["response"] for r in read_jsonl(real)] == [r["response"] for r in read_jsonl(blank)]


def test_cli_writes_records_and_refuses_to_resume_with_other_settings(tiny_model_dir, val_path, tmp_path):
    output = str(tmp_path / "cli.jsonl")
    common = [
        "--model_path", tiny_model_dir, "--data", val_path, "--output", output, "--engine", "hf",
        "--min_pixels", str(SPEC.min_pixels), "--max_pixels", str(SPEC.max_pixels),
        "--max_response_length", str(MAX_TOKENS), "--limit", "2", "--no_progress",
    ]
    report = main(common)
    assert report.responses_written == 2
    assert len(read_jsonl(output)) == 2
    settings = json.load(open(str(tmp_path / "cli.generation.json"), encoding="utf-8"))
    assert settings["max_response_length"] == MAX_TOKENS and settings["temperature"] == 0.0
    assert settings["blank_images"] is False

    with pytest.raises(ValueError, match="temperature: stored 0.0, now 0.7"):
        main(common + ["--temperature", "0.7"])
    assert main(common).prompts_skipped == 2  # same settings: nothing to do
    assert os.path.exists(output)


@pytest.mark.parametrize(
    ("feature", "carried"),
    [
        (datasets.Value("string"), True),
        (datasets.Value("bool"), True),
        (datasets.List(datasets.Value("int64")), True),
        ({"subject": datasets.Value("string"), "level": datasets.Value("int32")}, True),
        (datasets.ClassLabel(names=["a", "b"]), True),
        (datasets.Image(), False),
        (datasets.List(datasets.Image()), False),
        (datasets.Value("binary"), False),
        (datasets.Value("timestamp[s]"), False),
    ],
)
def test_only_json_valued_columns_are_carried(feature, carried):
    assert is_json_feature(feature) is carried


def test_help_answers(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--help"])
    assert exit_info.value.code == 0
    assert "--model_path" in capsys.readouterr().out


@pytest.mark.timeout(120)
def test_skip_bad_rows_leaves_out_a_truncated_image_and_the_summary_lists_it(tiny_model_dir, val_path, tmp_path):
    import io

    import numpy as np
    from PIL import Image

    from verl.eval.score import main as score_main

    rows = pd.read_parquet(val_path).head(3)
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (96, 96, 3), dtype=np.uint8)).save(buffer, format="PNG")
    rows.at[rows.index[1], "images"] = [{"bytes": buffer.getvalue()[:2000], "path": None}]  # valid header, cut pixels
    data = str(tmp_path / "one_bad.parquet")
    rows.to_parquet(data)
    output = str(tmp_path / "out.jsonl")
    common = [
        "--model_path", tiny_model_dir, "--data", data, "--output", output, "--engine", "hf",
        "--min_pixels", str(SPEC.min_pixels), "--max_pixels", str(SPEC.max_pixels),
        "--max_response_length", str(MAX_TOKENS), "--no_progress",
    ]
    with pytest.raises(ValueError, match=r"one_bad.parquet row 1 field 'images\[0\]': cannot decode image"):
        main(common)
    report = main(common + ["--skip_bad_rows"])
    assert report.responses_written == 2
    assert sorted(r["dataset_index"] for r in read_jsonl(output)) == [0, 2]
    skipped = json.load(open(str(tmp_path / "out.skipped.json"), encoding="utf-8"))["skipped_rows"]
    assert [row["dataset_index"] for row in skipped] == [1] and "cannot decode image" in skipped[0]["error"]
    summary = score_main(["--input", output, "--reward", "see_think"])
    assert summary["n_skipped_rows"] == 1 and summary["skipped_rows"] == skipped
    assert summary["data"] == data  # the summary names the data its responses came from
