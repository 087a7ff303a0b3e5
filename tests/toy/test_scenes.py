"""The scenes task (the recipe's transfer check): every answer follows from the picture, every
description answers its question without the picture, and the images are what the task promises."""

import collections
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from verl.toy.scenes import (
    COLORS,
    KINDS,
    QUESTION_TYPES,
    SceneTaskSpec,
    describe,
    description_accuracy,
    generate_split,
    render,
)

SPEC = SceneTaskSpec()


@pytest.fixture(scope="module")
def val_rows():
    return generate_split(600, seed=0, split="val")


@pytest.fixture(scope="module")
def sft_rows():
    return generate_split(1200, seed=0, split="sft")


def answer_from_objects(sample) -> str:
    """The answer computed from the objects alone, independently of the generator's bookkeeping."""
    objects = sample.scene.objects
    question = sample.question
    if sample.question_type == "count":
        return str(len(objects))
    if sample.question_type == "color":
        kind = re.fullmatch(r"What color is the (\w+)\?", question).group(1)
        return next(o.color for o in objects if o.kind == kind)
    if sample.question_type == "shape":
        color = re.fullmatch(r"What shape is the (\w+) object\?", question).group(1)
        return next(o.kind for o in objects if o.color == color)
    if sample.question_type == "exists":
        color, kind = re.fullmatch(r"Is there a (\w+) (\w+) in the image\?", question).groups()
        return "yes" if any((o.color, o.kind) == (color, kind) for o in objects) else "no"
    if sample.question_type == "left_of":
        c1, k1, c2, k2 = re.fullmatch(r"Is the (\w+) (\w+) to the left of the (\w+) (\w+)\?", question).groups()
        first = next(o for o in objects if (o.color, o.kind) == (c1, k1))
        second = next(o for o in objects if (o.color, o.kind) == (c2, k2))
        return "yes" if first.center_x < second.center_x else "no"
    k1, k2 = re.fullmatch(r"Which is bigger, the (\w+) or the (\w+)\?", question).groups()
    first, second = (next(o for o in objects if o.kind == k) for k in (k1, k2))
    return k1 if first.side > second.side else k2


def answer_from_description(sample) -> str:
    """The answer read from the description text only: what the self-reward's re-answer must do."""
    listed = re.fullmatch(r"From left to right, the image shows (.*)\.", describe(sample)).group(1)
    items = [tuple(part.split()[1:]) for part in re.split(r", | and ", listed)]  # (size, colour, kind)
    question = sample.question
    if sample.question_type == "count":
        return str(len(items))
    if sample.question_type == "color":
        kind = re.fullmatch(r"What color is the (\w+)\?", question).group(1)
        return next(color for _, color, k in items if k == kind)
    if sample.question_type == "shape":
        color = re.fullmatch(r"What shape is the (\w+) object\?", question).group(1)
        return next(k for _, c, k in items if c == color)
    if sample.question_type == "exists":
        color, kind = re.fullmatch(r"Is there a (\w+) (\w+) in the image\?", question).groups()
        return "yes" if any((c, k) == (color, kind) for _, c, k in items) else "no"
    if sample.question_type == "left_of":
        c1, k1, c2, k2 = re.fullmatch(r"Is the (\w+) (\w+) to the left of the (\w+) (\w+)\?", question).groups()
        order = [(c, k) for _, c, k in items]
        return "yes" if order.index((c1, k1)) < order.index((c2, k2)) else "no"
    k1, k2 = re.fullmatch(r"Which is bigger, the (\w+) or the (\w+)\?", question).groups()
    rank = {"small": 0, "medium": 1, "large": 2}
    size = {k: rank[s] for s, _, k in items}
    return k1 if size[k1] > size[k2] else k2


def test_every_answer_follows_from_the_objects_and_from_the_description(val_rows, sft_rows):
    for sample in val_rows + sft_rows:
        kinds = [o.kind for o in sample.scene.objects]
        colors = [o.color for o in sample.scene.objects]
        assert len(set(kinds)) == len(kinds) and len(set(colors)) == len(colors)  # one answer per question
        assert answer_from_objects(sample) == sample.answer, sample
        assert answer_from_description(sample) == sample.answer, sample


def test_types_balanced_val_uniform_sft_carries_the_prior(val_rows, sft_rows):
    for rows in (val_rows, sft_rows):
        assert collections.Counter(s.question_type for s in rows) == {t: len(rows) // 6 for t in QUESTION_TYPES}
    # Val: answers spread over their options; yes/no near half. SFT: the prior answer ~70%.
    for question_type, options in (("exists", 2), ("left_of", 2), ("count", 4), ("color", len(COLORS))):
        answers = collections.Counter(s.answer for s in val_rows if s.question_type == question_type)
        assert len(answers) == options and max(answers.values()) < 100 * 2.2 / options, (question_type, answers)
    sft_prior = np.mean([not s.distractor for s in sft_rows])
    assert 0.65 < sft_prior < 0.75, sft_prior
    assert np.mean([s.distractor for s in val_rows]) > 0.4


def test_images_are_small_varied_textured_and_off_the_patch_grid(val_rows):
    sizes = {(s.scene.width, s.scene.height) for s in val_rows}
    assert all(SPEC.min_side <= w <= SPEC.max_side and SPEC.min_side <= h <= SPEC.max_side for w, h in sizes)
    assert len(sizes) > 200  # varied sizes and aspects
    assert {s.scene.background for s in val_rows} == {"plain", "stripes", "checks", "noise"}
    offsets = np.array([o.center_x % 14 for s in val_rows for o in s.scene.objects])
    assert np.histogram(offsets, bins=7, range=(0, 14))[0].min() > 0.08 * len(offsets)  # no grid alignment
    assert {o.kind for s in val_rows for o in s.scene.objects} == set(KINDS)
    for sample in val_rows[:60]:
        pixels = np.asarray(render(sample.scene)).astype(int)
        assert pixels.shape == (sample.scene.height, sample.scene.width, 3)
        for obj in sample.scene.objects:  # the object's colour at its centre
            assert tuple(pixels[int(obj.center_y), int(obj.center_x)]) == COLORS[obj.color], (sample, obj)
        background = {tuple(p) for p in pixels.reshape(-1, 3)} - {COLORS[o.color] for o in sample.scene.objects}
        assert len(background) == 1 if sample.scene.background == "plain" else len(background) > 1


def test_same_seed_same_rows():
    assert generate_split(30, seed=5, split="train") == generate_split(30, seed=5, split="train")
    assert generate_split(30, seed=5, split="train") != generate_split(30, seed=6, split="train")


def test_the_cli_writes_the_recipes_files_for_the_scenes_task(tmp_path):
    out = tmp_path / "scenes"
    subprocess.run(
        [sys.executable, "scripts/make_synthetic_dataset.py", "--out", str(out), "--task", "scenes", "--train", "12",
         "--val", "12", "--sft", "12"],
        check=True, capture_output=True, text=True,
    )
    val = pd.read_parquet(out / "val.parquet")
    assert list(val.columns) == ["problem", "answer", "images", "distractor", "question_type"]
    assert set(val.question_type) == set(QUESTION_TYPES)
    assert (out / "sft.json").exists() and len(list((out / "images").iterdir())) == 12


def test_description_accuracy_scores_each_perception_of_the_scene():
    sample = next(s for s in generate_split(30, seed=3, split="val") if len(s.scene.objects) >= 2)
    reference = f"<description> {describe(sample)} </description> <think> ... </think> \\boxed{{{sample.answer}}}"
    assert all(description_accuracy(reference, sample).values())
    first, second = sample.scene.objects[:2]
    swapped = reference.replace(f"{first.color} {first.kind}", f"{second.color} {first.kind}", 1)
    assert description_accuracy(swapped, sample) == {
        "count": True, "colors": False, "kinds": True, "pairs": False, "full": False, "exact": False,
    }
    dropped = reference.replace(f"a {first.size_word} {first.color} {first.kind}", "", 1)
    assert not any(description_accuracy(dropped, sample).values())
    assert not any(description_accuracy(f"\\boxed{{{sample.answer}}}", sample).values())
