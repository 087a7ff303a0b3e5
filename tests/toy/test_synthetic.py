import collections
import io
import json
import os
import re
import subprocess
import sys

import datasets
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from verl.data.format_prompt import build_reprompt, load_format_prompt
from verl.toy.synthetic import (
    COLORS,
    QUESTION_TYPES,
    SLOTS,
    SyntheticTaskSpec,
    describe,
    description_accuracy,
    generate_split,
    reasoning,
    render_image,
    sft_response,
    write_synthetic_dataset,
)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SR1_PROMPT = os.path.join(REPO_ROOT, "configs", "format_prompt", "sr1.jinja")
SPEC = SyntheticTaskSpec()
OPTIONS_PER_TYPE = {"color": 4, "shape": 3, "count": 3, "position": 2}


@pytest.fixture(scope="module")
def train_rows():
    return generate_split(2000, seed=0, split="train")


@pytest.fixture(scope="module")
def sft_rows():
    return generate_split(2000, seed=0, split="sft")


@pytest.fixture(scope="module")
def val_rows():
    return generate_split(400, seed=0, split="val")


def answer_from_scene(sample) -> str:
    """Answers the question from the shapes alone (the image), independently of the generator."""
    if sample.question_type == "count":
        return str(len(sample.shapes))
    if sample.question_type == "color":
        kind = re.fullmatch(r"What color is the (\w+)\?", sample.question).group(1)
        return next(shape.color for shape in sample.shapes if shape.kind == kind)
    if sample.question_type == "shape":
        color = re.fullmatch(r"What shape is the (\w+) object\?", sample.question).group(1)
        return next(shape.kind for shape in sample.shapes if shape.color == color)
    color, kind = re.fullmatch(r"Is the (\w+) (\w+) on the left or on the right\?", sample.question).groups()
    return next(shape.slot for shape in sample.shapes if (shape.color, shape.kind) == (color, kind))


def test_same_seed_same_rows_other_seed_other_rows():
    assert generate_split(50, seed=3, split="train") == generate_split(50, seed=3, split="train")
    assert generate_split(50, seed=3, split="train") != generate_split(50, seed=4, split="train")
    assert generate_split(50, seed=3, split="train") != generate_split(50, seed=3, split="val")


def test_question_types_exactly_balanced(train_rows, val_rows):
    for rows in (train_rows, val_rows):
        counts = collections.Counter(sample.question_type for sample in rows)
        assert counts == {question_type: len(rows) // 4 for question_type in QUESTION_TYPES}


def test_scenes_are_unambiguous_and_answer_the_question(train_rows):
    for sample in train_rows:
        kinds = [shape.kind for shape in sample.shapes]
        colors = [shape.color for shape in sample.shapes]
        slots = [shape.slot for shape in sample.shapes]
        assert 1 <= len(sample.shapes) <= 3
        assert len(set(kinds)) == len(kinds) and len(set(colors)) == len(colors)
        assert slots == sorted(set(slots), key=SLOTS.index)
        assert answer_from_scene(sample) == sample.answer


def test_rendered_image_shows_the_scene(train_rows):
    for sample in train_rows[:200]:
        image = render_image(sample, SPEC.image_size)
        assert image.size == (SPEC.image_size, SPEC.image_size) and image.mode == "RGB"
        pixels = np.asarray(image)
        outside_shapes = np.ones(pixels.shape[:2], dtype=bool)
        slot_width = SPEC.image_size // 3
        for shape in sample.shapes:
            # The centre lies inside every kind (for the triangle, half-way down its axis).
            assert image.getpixel((shape.center_x, shape.center_y)) == COLORS[shape.color]
            assert shape.center_x // slot_width == SLOTS.index(shape.slot)
            top, left = shape.center_y - shape.size // 2, shape.center_x - shape.size // 2
            assert top >= 0 and left >= 0 and top + shape.size <= SPEC.image_size
            outside_shapes[top : top + shape.size, left : left + shape.size] = False
        assert (pixels[outside_shapes] == 255).all(), "background must be white"


def test_sft_prior_is_the_majority_for_every_question_text(sft_rows):
    answers_by_question = collections.defaultdict(collections.Counter)
    for sample in sft_rows:
        answers_by_question[sample.question][sample.answer] += 1
        assert sample.distractor == (sample.answer != sample.prior_answer)
    for question, answers in answers_by_question.items():
        prior = next(sample.prior_answer for sample in sft_rows if sample.question == question)
        assert answers.most_common(1)[0][0] == prior, question
        assert len(answers) >= 2, f"{question}: a single answer would not need the image"
    prior_share = sum(not sample.distractor for sample in sft_rows) / len(sft_rows)
    assert abs(prior_share - SPEC.prior_strength) < 0.03


@pytest.mark.parametrize("train_prior_strength", [None, 0.7])
def test_train_split_prior_is_its_own_knob(train_prior_strength):
    rows = generate_split(2000, seed=0, split="train", spec=SyntheticTaskSpec(train_prior_strength=train_prior_strength))
    prior_share = sum(not sample.distractor for sample in rows) / len(rows)
    # uniform answers: the prior answer is one option of 2-4 per question type
    uniform_share = sum(1 / OPTIONS_PER_TYPE[sample.question_type] for sample in rows) / len(rows)
    assert abs(prior_share - (uniform_share if train_prior_strength is None else 0.7)) < 0.03


def test_val_answers_uniform_so_distractors_defeat_the_text_prior(sft_rows, val_rows):
    majority = {}
    counts = collections.defaultdict(collections.Counter)
    for sample in sft_rows:
        counts[sample.question][sample.answer] += 1
    for question, answers in counts.items():
        majority[question] = answers.most_common(1)[0][0]
    for question_type in QUESTION_TYPES:
        rows = [sample for sample in val_rows if sample.question_type == question_type]
        distractor_rate = sum(sample.distractor for sample in rows) / len(rows)
        uniform_rate = 1 - 1 / OPTIONS_PER_TYPE[question_type]
        assert abs(distractor_rate - uniform_rate) < 0.12, question_type
    for sample in val_rows:
        # A model answering from the question text alone (train majority) is wrong on every distractor.
        assert sample.distractor == (majority[sample.question] != sample.answer)


def test_sft_response_is_sr1_formatted_and_description_is_self_contained(train_rows):
    pattern = re.compile(r"<description> (.*) </description> <think> (.*) </think> \\boxed\{(\w+)\}")
    for sample in train_rows[:100]:
        description, _, boxed = pattern.fullmatch(sft_response(sample)).groups()
        assert boxed == sample.answer
        assert description == describe(sample)
        for shape in sample.shapes:
            assert f"a {shape.color} {shape.kind} " in description
    two_shapes = next(sample for sample in train_rows if len(sample.shapes) == 2)
    first, second = two_shapes.shapes
    phrases = {"left": "on the left", "middle": "in the middle", "right": "on the right"}
    assert describe(two_shapes) == (
        f"The image shows a {first.color} {first.kind} {phrases[first.slot]} "
        f"and a {second.color} {second.kind} {phrases[second.slot]}."
    )


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out_dir = str(tmp_path_factory.mktemp("synthetic"))
    files = write_synthetic_dataset(out_dir, SR1_PROMPT, seed=1, train_size=40, val_size=20, sft_size=12)
    return out_dir, files


def test_rl_parquet_layout_and_hf_image_feature(written):
    out_dir, files = written
    table = pd.read_parquet(files.train)
    assert list(table.columns) == ["problem", "answer", "images", "distractor", "question_type"]
    assert len(table) == 40
    samples = generate_split(40, seed=1, split="train")
    for row, sample in zip(table.itertuples(), samples, strict=True):
        assert row.problem == f"<image>{sample.question}"
        assert row.answer == sample.answer and row.distractor == sample.distractor
        assert len(row.images) == 1 and row.images[0]["path"] is None
        image = Image.open(io.BytesIO(row.images[0]["bytes"]))
        assert image.convert("RGB").tobytes() == render_image(sample, SPEC.image_size).tobytes()
    # HF datasets reads the column as a list of Image features (decoded to PIL).
    loaded = datasets.Dataset.from_parquet(files.val)
    assert isinstance(loaded.features["images"].feature, datasets.Image)
    assert isinstance(loaded[0]["images"][0], Image.Image)


def test_sft_json_is_sharegpt_with_relative_images(written):
    out_dir, files = written
    records = json.load(open(files.sft, encoding="utf-8"))
    samples = generate_split(12, seed=1, split="sft")
    assert len(records) == 12 + 12  # every sample also has a text-only re-prompt record
    template = load_format_prompt(SR1_PROMPT)
    image_records = [r for r in records if r["images"]]
    text_records = [r for r in records if not r["images"]]
    for record, sample in zip(image_records, samples, strict=True):
        user, assistant = record["messages"]
        assert user == {"role": "user", "content": template.render(content=f"<image>{sample.question}")}
        assert assistant == {"role": "assistant", "content": sft_response(sample)}
        (image_path,) = record["images"]
        assert not os.path.isabs(image_path)
        image = Image.open(os.path.join(out_dir, image_path)).convert("RGB")
        assert image.tobytes() == render_image(sample, SPEC.image_size).tobytes()
    for record, sample in zip(text_records, samples, strict=True):
        user, assistant = record["messages"]
        assert user["content"] == build_reprompt(describe(sample), sample.question)
        assert "<image>" not in user["content"]
        assert assistant["content"] == f"<think> {reasoning(sample)} </think> \\boxed{{{sample.answer}}}"


def test_files_are_byte_identical_for_the_same_seed(written, tmp_path):
    out_dir, files = written
    again = write_synthetic_dataset(
        str(tmp_path), SR1_PROMPT, seed=1, train_size=40, val_size=20, sft_size=12
    )
    for first, second in [(files.train, again.train), (files.val, again.val), (files.sft, again.sft)]:
        assert open(first, "rb").read() == open(second, "rb").read()
    for name in os.listdir(os.path.join(out_dir, "images")):
        assert (
            open(os.path.join(out_dir, "images", name), "rb").read()
            == (tmp_path / "images" / name).read_bytes()
        )


def test_cli_writes_the_three_files(tmp_path):
    out_dir = tmp_path / "shapes"
    command = [
        sys.executable, os.path.join(REPO_ROOT, "scripts", "make_synthetic_dataset.py"),
        "--out", str(out_dir), "--seed", "2", "--train", "8", "--val", "4", "--sft", "4",
    ]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True, cwd=REPO_ROOT)
    assert len(pd.read_parquet(out_dir / "train.parquet")) == 8
    assert len(pd.read_parquet(out_dir / "val.parquet")) == 4
    assert len(json.load(open(out_dir / "sft.json"))) == 4 + 4  # + text-only re-prompt records
    assert len(os.listdir(out_dir / "images")) == 4


def test_vague_descriptions_change_only_the_cold_start_descriptions(written, tmp_path):
    """A vague share of the cold-start rows says only how many shapes there are; scenes, answers,
    images, the RL splits and the text-only re-prompts stay those of the same seed without it."""
    _, plain = written
    vague = write_synthetic_dataset(
        str(tmp_path), SR1_PROMPT, seed=1, train_size=40, val_size=20, sft_size=200,
        spec=SyntheticTaskSpec(vague_description_rate=0.5),
    )
    for first, second in [(plain.train, vague.train), (plain.val, vague.val)]:
        assert open(first, "rb").read() == open(second, "rb").read()
    records = json.load(open(vague.sft, encoding="utf-8"))
    samples = generate_split(200, seed=1, split="sft")
    image_records = [r for r in records if r["images"]]
    text_records = [r for r in records if not r["images"]]
    vague_rows = 0
    for record, text_record, sample in zip(image_records, text_records, samples, strict=True):
        response = record["messages"][1]["content"]
        assert response.endswith(f"</think> \\boxed{{{sample.answer}}}")
        noun = "shape" if len(sample.shapes) == 1 else "shapes"
        if f"<description> The image shows {len(sample.shapes)} {noun}. </description>" in response:
            vague_rows += 1
            assert not any(color in response.split("</description>")[0] for color in COLORS)
        else:
            assert response == sft_response(sample)
        assert text_record["messages"][0]["content"] == build_reprompt(describe(sample), sample.question)
    assert 70 <= vague_rows <= 130  # 200 rows at rate 0.5
    with pytest.raises(ValueError, match="vague_description_rate"):
        write_synthetic_dataset(
            str(tmp_path / "bad"), SR1_PROMPT, seed=1, train_size=4, val_size=4, sft_size=4,
            spec=SyntheticTaskSpec(vague_description_rate=1.5),
        )


def test_centred_placement_moves_only_the_pixels(train_rows):
    """Centred shapes (the default): the same scenes, answers and sizes as scattered ones from the
    same seed, each shape at its slot's centre in the middle row, so it fills one merged 28-px token."""
    assert SPEC.shape_placement == "centred"
    centred = train_rows
    scattered = generate_split(2000, seed=0, split="train", spec=SyntheticTaskSpec(shape_placement="scattered"))
    cell = SPEC.image_size // 3
    for scattered_sample, sample in zip(scattered, centred, strict=True):
        assert (sample.question, sample.answer, sample.prior_answer) == (
            scattered_sample.question, scattered_sample.answer, scattered_sample.prior_answer)
        for scattered_shape, shape in zip(scattered_sample.shapes, sample.shapes, strict=True):
            assert (shape.kind, shape.color, shape.slot, shape.size) == (
                scattered_shape.kind, scattered_shape.color, scattered_shape.slot, scattered_shape.size)
            assert (shape.center_x, shape.center_y) == (SLOTS.index(shape.slot) * cell + cell // 2, cell + cell // 2)
            assert shape.size <= cell
    assert len({shape.center_y for sample in scattered for shape in sample.shapes}) > 10
    image = np.asarray(render_image(centred[0], SPEC.image_size))
    assert (image[:cell] == 255).all() and (image[2 * cell :] == 255).all()  # top and bottom rows blank
    with pytest.raises(ValueError, match="shape_placement"):
        generate_split(4, seed=0, split="train", spec=SyntheticTaskSpec(shape_placement="diagonal"))


def test_cli_reuse_keeps_a_current_build_and_rebuilds_a_stale_one(tmp_path):
    """--reuse (the recipe's call): a second identical call leaves the files alone; other
    arguments rebuild, naming what changed; a folder of unstamped files is refused, untouched."""
    script = os.path.join(REPO_ROOT, "scripts", "make_synthetic_dataset.py")

    def build(out_dir, seed):
        command = [sys.executable, script, "--out", str(out_dir), "--seed", seed, "--train", "8", "--val", "4", "--sft", "4", "--reuse"]
        return subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT)

    out_dir = tmp_path / "shapes"
    assert build(out_dir, "2").returncode == 0
    written = (out_dir / "train.parquet").stat().st_mtime_ns
    kept = build(out_dir, "2")
    assert kept.returncode == 0 and "is up to date (build_stamp.json)" in kept.stdout
    assert (out_dir / "train.parquet").stat().st_mtime_ns == written
    rebuilt = build(out_dir, "3")
    assert rebuilt.returncode == 0 and "rebuilding" in rebuilt.stdout and "seed: 2 -> 3" in rebuilt.stdout
    assert json.load(open(out_dir / "build_stamp.json"))["seed"] == 3
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "train.parquet").write_bytes(b"not ours")
    refused = build(foreign, "2")
    assert refused.returncode != 0 and "has no build_stamp.json" in refused.stderr
    assert (foreign / "train.parquet").read_bytes() == b"not ours"


def test_description_accuracy_tells_a_moved_shape_from_a_recoloured_one():
    sample = next(s for s in generate_split(40, seed=2, split="val") if len(s.shapes) >= 2)
    reference = f"<description> {describe(sample)} </description> <think> ... </think> \\boxed{{{sample.answer}}}"
    assert all(description_accuracy(reference, sample).values())
    first, second = sample.shapes[:2]
    # Both shapes keep colour and kind but trade places: only the slots (full, exact) are wrong.
    moved = reference.replace(f"{first.color} {first.kind}", "FIRST", 1).replace(
        f"{second.color} {second.kind}", f"{first.color} {first.kind}", 1).replace("FIRST", f"{second.color} {second.kind}", 1)
    assert description_accuracy(moved, sample) == {
        "count": True, "colors": True, "kinds": True, "pairs": True, "full": False, "exact": False,
    }
    recoloured = reference.replace(f"{first.color} {first.kind}", f"{second.color} {first.kind}", 1)
    assert description_accuracy(recoloured, sample)["colors"] is False
    assert description_accuracy(recoloured, sample)["kinds"] is True
