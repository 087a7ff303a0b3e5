"""A synthetic visual question-answering task with a measurable language prior.

Each image (white background, ``image_size`` x ``image_size`` pixels) holds 1-3 large shapes
(circle / square / triangle) in saturated colours (red / green / blue / yellow), one per
horizontal slot (left / middle / right). Shapes in one image differ in both kind and colour,
so every question below has exactly one answer:

    color     "What color is the circle?"                         -> "red"
    shape     "What shape is the green object?"                   -> "square"
    count     "How many shapes are in the image?"                 -> "2"
    position  "Is the blue triangle on the left or on the right?" -> "left"

Every question text occurs with several answers, so the answer needs the image. The cold-start
(SFT) split carries a language prior: for each question text one "prior answer" (fixed by
``prior_answer``) is the answer with probability ``prior_strength``, so the SFT model learns a
shortcut. Validation answers are uniform, and rows whose answer differs from the prior are flagged
``distractor=True``: a model that answers from the text alone is wrong on all of them, which makes
the language-shortcut rate measurable. The RL train split is uniform by default
(``train_prior_strength=None``): on a split where the prior answer is right 70% of the time,
outcome-reward RL on a model whose vision is right ~50% of the time is paid to answer from the
text, and it did (see ``SyntheticTaskSpec.train_prior_strength``).

Question types are assigned round-robin (each split is exactly balanced across types), the
random stream of each split depends only on (seed, split), and images are drawn without
anti-aliasing, so a seed always gives the same rows and the same PNG bytes.
"""

import io
import json
import os
import re
from collections import Counter
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from datasets import Features, List, Value
from datasets import Image as ImageFeature
from PIL import Image, ImageDraw

from verl.data.format_prompt import build_reprompt, load_format_prompt

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 20, 20),
    "green": (20, 160, 40),
    "blue": (30, 60, 230),
    "yellow": (240, 200, 0),
}
SHAPES = ("circle", "square", "triangle")
SLOTS = ("left", "middle", "right")
SLOT_PHRASES = {"left": "on the left", "middle": "in the middle", "right": "on the right"}
SIDES = ("left", "right")
COUNTS = ("1", "2", "3")
QUESTION_TYPES = ("color", "shape", "count", "position")

# The language prior of the training split, one answer per question text.
PRIOR_COLOR_OF_SHAPE = {"circle": "red", "square": "green", "triangle": "blue"}
PRIOR_SHAPE_OF_COLOR = {"red": "circle", "green": "square", "blue": "triangle", "yellow": "circle"}
PRIOR_SIDE_OF_COLOR = {"red": "left", "green": "right", "blue": "left", "yellow": "right"}
PRIOR_COUNT = "2"

Split = Literal["train", "val", "sft"]
ShapePlacement = Literal["scattered", "centred"]
SHAPE_PLACEMENTS: tuple[str, ...] = get_args(ShapePlacement)
# Independent random streams per split: changing the val size never changes the train rows.
_SPLIT_STREAMS: dict[str, int] = {"train": 0, "val": 1, "sft": 2}
_VAGUE_STREAM = 3

RL_FEATURES = Features(
    {
        "problem": Value("string"),
        "answer": Value("string"),
        "images": List(ImageFeature()),
        "distractor": Value("bool"),
        "question_type": Value("string"),
    }
)


@dataclass(frozen=True)
class SyntheticTaskSpec:
    """Knobs of the synthetic task."""

    image_size: int = 84
    """Side of the square images in pixels (84 = 3x3 merged visual tokens for Qwen2.5-VL)."""
    prior_strength: float = 0.7
    """Probability that an SFT row's answer is the prior answer of its question text."""
    train_prior_strength: float | None = None
    """The same for the RL train split; None = uniform answers, like val. Measured on the tiny
    recipe: with 0.7 here, 30 GRPO steps took val accuracy from 62.0% to 46.0% and distractor
    accuracy from 45.9% to 21.1% (the policy learned the prior the split pays for)."""
    vague_description_rate: float = 0.0
    """Share of cold-start image rows whose description is vague ("The image shows 2 shapes.":
    no colour, kind or place) while the answer still comes from the image. This is the
    insufficient perception the Vision-SR1 self-reward targets: a policy that learned it answers
    right with a description that cannot answer the question on its own (a language shortcut in
    the paper's terms). Measured at 0.5 (docs/results.md): GRPO with the self-reward dropped the vague
    descriptions in 3 of 3 seeds, GRPO on the answer reward alone in 2 of 3."""
    shape_placement: ShapePlacement = "centred"
    """Where a shape sits in its slot. "centred": at the centre of its slot's cell in the middle
    row of the image, which at 84 px is one merged 28x28 visual token of Qwen2.5-VL per shape (2x2
    patches of 14 px); "scattered" (the default until 2026-12-02): at a random height and +-1 px
    sideways. Scenes, answers and shape sizes are the same in both (the same random draws; only the
    pixels move). Measured on the tiny model (docs/results.md): after its 6-epoch SFT on scattered shapes
    greedy descriptions named a shape's kind right for 50% of shapes and its colour for 61% (a
    shape straddling tokens is more than the 1-layer vision tower pieces together); centred, every
    description of a colour or shape question named them right."""

    def __post_init__(self) -> None:
        if self.shape_placement not in SHAPE_PLACEMENTS:
            raise ValueError(f"unknown shape_placement {self.shape_placement!r}; expected one of {SHAPE_PLACEMENTS}")

    def prior_strength_of(self, split: str) -> float | None:
        """The prior strength ``split`` is drawn with; None = uniform answers."""
        return {"sft": self.prior_strength, "train": self.train_prior_strength}.get(split)


@dataclass(frozen=True)
class PlacedShape:
    """One shape of a scene: what it is and where it is drawn (pixels)."""

    kind: str
    color: str
    slot: str
    center_x: int
    center_y: int
    size: int


@dataclass(frozen=True)
class SyntheticSample:
    """One question about one scene; ``shapes`` are ordered left to right."""

    shapes: tuple[PlacedShape, ...]
    subject: PlacedShape | None
    """The shape the question is about (None for count questions)."""
    question_type: str
    question: str
    answer: str
    prior_answer: str

    @property
    def distractor(self) -> bool:
        """True when the answer contradicts the training prior for this question text."""
        return self.answer != self.prior_answer


def prior_answer(question_type: str, subject_color: str | None, subject_kind: str | None) -> str:
    """The training split's majority answer for a question about this subject."""
    if question_type == "color":
        return PRIOR_COLOR_OF_SHAPE[subject_kind]
    if question_type == "shape":
        return PRIOR_SHAPE_OF_COLOR[subject_color]
    if question_type == "count":
        return PRIOR_COUNT
    if question_type == "position":
        return PRIOR_SIDE_OF_COLOR[subject_color]
    raise ValueError(f"unknown question type {question_type!r}; expected one of {QUESTION_TYPES}")


def draw_answer(rng: np.random.Generator, options: tuple[str, ...], prior: str, strength: float | None) -> str:
    """Prior answer with probability ``strength`` (else another option); uniform when ``strength`` is None."""
    if strength is None:
        return options[rng.integers(len(options))]
    if rng.random() < strength:
        return prior
    others = [option for option in options if option != prior]
    return others[rng.integers(len(others))]


def _place_shapes(
    rng: np.random.Generator,
    num_shapes: int,
    target: tuple[str, str] | None,
    target_slot: str | None,
    spec: SyntheticTaskSpec,
) -> tuple[tuple[PlacedShape, ...], PlacedShape]:
    """Random scene of ``num_shapes`` shapes with distinct kinds, colours and slots.

    ``target`` (kind, colour) is always in the scene, in ``target_slot`` when given. Returns the
    shapes ordered left to right and the target shape (an arbitrary one without a target).
    ``spec.shape_placement`` moves the shapes' pixels; it never changes the random draws.
    """
    image_size = spec.image_size
    kinds = list(rng.permutation(SHAPES))
    colors = list(rng.permutation(list(COLORS)))
    slots = list(rng.permutation(SLOTS))
    if target is not None:
        kinds.remove(target[0])
        colors.remove(target[1])
        kinds.insert(0, target[0])
        colors.insert(0, target[1])
    if target_slot is not None:
        slots.remove(target_slot)
        slots.insert(0, target_slot)
    slot_width = image_size // len(SLOTS)
    shapes = []
    for kind, color, slot in zip(kinds[:num_shapes], colors[:num_shapes], slots[:num_shapes], strict=True):
        size = int(rng.integers(int(0.7 * slot_width), int(0.85 * slot_width) + 1))
        margin = size // 2 + 1
        jitter_x = int(rng.integers(-1, 2))
        random_y = int(rng.integers(margin, image_size - margin + 1))
        center_x = SLOTS.index(slot) * slot_width + slot_width // 2
        if spec.shape_placement == "scattered":
            center_x, center_y = center_x + jitter_x, random_y
        else:
            center_y = image_size // 2
        shapes.append(PlacedShape(str(kind), str(color), str(slot), center_x, center_y, size))
    return tuple(sorted(shapes, key=lambda shape: SLOTS.index(shape.slot))), shapes[0]


def make_sample(
    rng: np.random.Generator, question_type: str, split: Split, spec: SyntheticTaskSpec
) -> SyntheticSample:
    """Draws one question of ``question_type`` and a scene that answers it."""
    strength = spec.prior_strength_of(split)
    num_shapes = int(rng.integers(1, len(SHAPES) + 1))
    if question_type == "color":
        kind = SHAPES[rng.integers(len(SHAPES))]
        prior = prior_answer("color", None, kind)
        answer = draw_answer(rng, tuple(COLORS), prior, strength)
        shapes, subject = _place_shapes(rng, num_shapes, (kind, answer), None, spec)
        question = f"What color is the {kind}?"
    elif question_type == "shape":
        color = list(COLORS)[rng.integers(len(COLORS))]
        prior = prior_answer("shape", color, None)
        answer = draw_answer(rng, SHAPES, prior, strength)
        shapes, subject = _place_shapes(rng, num_shapes, (answer, color), None, spec)
        question = f"What shape is the {color} object?"
    elif question_type == "count":
        prior = prior_answer("count", None, None)
        answer = draw_answer(rng, COUNTS, prior, strength)
        shapes, _ = _place_shapes(rng, int(answer), None, None, spec)
        subject = None
        question = "How many shapes are in the image?"
    elif question_type == "position":
        kind = SHAPES[rng.integers(len(SHAPES))]
        color = list(COLORS)[rng.integers(len(COLORS))]
        prior = prior_answer("position", color, kind)
        answer = draw_answer(rng, SIDES, prior, strength)
        shapes, subject = _place_shapes(rng, num_shapes, (kind, color), answer, spec)
        question = f"Is the {color} {kind} on the left or on the right?"
    else:
        raise ValueError(f"unknown question type {question_type!r}; expected one of {QUESTION_TYPES}")
    return SyntheticSample(shapes, subject, question_type, question, answer, prior)


def generate_split(
    num_rows: int, seed: int, split: Split, spec: SyntheticTaskSpec = SyntheticTaskSpec()
) -> list[SyntheticSample]:
    """``num_rows`` samples; question types round-robin, so each type gets num_rows/4 (+-1) rows."""
    if split not in _SPLIT_STREAMS:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(_SPLIT_STREAMS)}")
    rng = np.random.default_rng([seed, _SPLIT_STREAMS[split]])
    return [make_sample(rng, QUESTION_TYPES[i % len(QUESTION_TYPES)], split, spec) for i in range(num_rows)]


def render_image(sample: SyntheticSample, image_size: int) -> Image.Image:
    """RGB image of the sample's scene on a white background."""
    image = Image.new("RGB", (image_size, image_size), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    for shape in sample.shapes:
        half = shape.size // 2
        left, top = shape.center_x - half, shape.center_y - half
        right, bottom = left + shape.size - 1, top + shape.size - 1
        fill = COLORS[shape.color]
        if shape.kind == "circle":
            draw.ellipse((left, top, right, bottom), fill=fill)
        elif shape.kind == "square":
            draw.rectangle((left, top, right, bottom), fill=fill)
        else:
            draw.polygon([(shape.center_x, top), (left, bottom), (right, bottom)], fill=fill)
    return image


def png_bytes(image: Image.Image) -> bytes:
    """PNG encoding of ``image`` (deterministic for a given Pillow version)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def vague_description(sample: SyntheticSample) -> str:
    """A description that counts the shapes and says nothing else, e.g. "The image shows 2 shapes."."""
    noun = "shape" if len(sample.shapes) == 1 else "shapes"
    return f"The image shows {len(sample.shapes)} {noun}."


def describe(sample: SyntheticSample) -> str:
    """Ground-truth description of the scene, e.g. "The image shows a red circle on the left."."""
    parts = [f"a {shape.color} {shape.kind} {SLOT_PHRASES[shape.slot]}" for shape in sample.shapes]
    listing = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return f"The image shows {listing}."



DESCRIPTION_CHECKS = ("count", "colors", "kinds", "pairs", "full", "exact")
DescribedObject = tuple[str, str, str]
"""(colour, kind, where): `where` is the slot phrase on the shapes task, the size word on scenes."""


def score_description(response: str, object_pattern: re.Pattern, truth: list[DescribedObject]) -> dict[str, bool]:
    """Which perceptions a response's <description> gets right against the scene's objects `truth`:
    their number, the multisets of their colours, kinds, (colour, kind) pairs and whole
    (colour, kind, where) objects ("full"), and the whole list in order ("exact"). `object_pattern`
    finds one described object with named groups color, kind and where. No description: all wrong.
    Measured on every prompt whatever its question, so a perception GRPO unlearns shows here
    even where no question asks for it."""
    found = re.search(r"<description>(.*?)</description>", response, re.S)
    described = [(m["color"], m["kind"], m["where"]) for m in object_pattern.finditer(found.group(1))] if found else []

    def same(part) -> bool:
        return Counter(map(part, described)) == Counter(map(part, truth))

    return {
        "count": len(described) == len(truth),
        "colors": same(lambda obj: obj[0]),
        "kinds": same(lambda obj: obj[1]),
        "pairs": same(lambda obj: obj[:2]),
        "full": same(lambda obj: obj),
        "exact": described == truth,
    }


DESCRIBED_SHAPE = re.compile(
    rf"\b(?P<color>{'|'.join(COLORS)}) (?P<kind>{'|'.join(SHAPES)}) (?P<where>{'|'.join(SLOT_PHRASES.values())})\b"
)


def description_accuracy(response: str, sample: SyntheticSample) -> dict[str, bool]:
    """`score_description` on the shapes task: colour, kind and slot of each shape, in `describe`'s order."""
    truth = [(shape.color, shape.kind, SLOT_PHRASES[shape.slot]) for shape in sample.shapes]
    return score_description(response, DESCRIBED_SHAPE, truth)

def reasoning(sample: SyntheticSample) -> str:
    """Short reasoning from the description to the answer."""
    subject = sample.subject
    if sample.question_type == "color":
        return (
            f"The question asks for the color of the {subject.kind}. The {subject.kind} is {sample.answer}."
        )
    if sample.question_type == "shape":
        return (
            f"The question asks which shape is {subject.color}. "
            f"The {subject.color} shape is a {sample.answer}."
        )
    if sample.question_type == "count":
        noun = "shape" if sample.answer == "1" else "shapes"
        return f"The question asks how many shapes there are. I count {sample.answer} {noun}."
    return (
        f"The question asks where the {subject.color} {subject.kind} is. "
        f"The {subject.color} {subject.kind} is on the {sample.answer}."
    )


def format_sft_response(description: str, reasoning_text: str, answer: str) -> str:
    """Assistant turn in the Vision-SR1 format: description, reasoning, boxed answer."""
    return f"<description> {description} </description> <think> {reasoning_text} </think> \\boxed{{{answer}}}"


def sft_response(sample: SyntheticSample, vague: bool = False) -> str:
    """`format_sft_response` of a shapes-task sample (``vague_description`` when ``vague``)."""
    return format_sft_response(vague_description(sample) if vague else describe(sample), reasoning(sample), sample.answer)


@dataclass(frozen=True)
class TaskRow:
    """One question of any synthetic task, as the writers below need it."""

    question: str
    answer: str
    question_type: str
    distractor: bool
    image: Image.Image
    description: str
    """The full perception: answers the question without the image."""
    vague_description: str
    """An insufficient perception (for `vague_description_rate`)."""
    reasoning: str

    @property
    def problem(self) -> str:
        """The RL ``problem`` column: image placeholder then question."""
        return f"<image>{self.question}"

    def sft_response(self, vague: bool = False) -> str:
        return format_sft_response(self.vague_description if vague else self.description, self.reasoning, self.answer)

    def text_only_record(self) -> dict:
        """The cold-start data's third response type: the self-reward re-prompt (perception text
        and question, no image) answered with reasoning and a boxed answer. Without it the policy
        has never seen the re-prompt, and the visual reward of early GRPO steps would be noise."""
        return {
            "messages": [
                {"role": "user", "content": build_reprompt(self.description, self.question)},
                {"role": "assistant", "content": f"<think> {self.reasoning} </think> \\boxed{{{self.answer}}}"},
            ],
            "images": [],
        }


def task_row(sample: SyntheticSample, image_size: int) -> TaskRow:
    return TaskRow(
        question=sample.question, answer=sample.answer, question_type=sample.question_type,
        distractor=sample.distractor, image=render_image(sample, image_size), description=describe(sample),
        vague_description=vague_description(sample), reasoning=reasoning(sample),
    )


def write_rl_rows(rows: list[TaskRow], path: str) -> None:
    """Parquet in the EasyR1 layout; ``images`` is a ``List(Image())`` column (PNG bytes, no path)."""
    table = pa.Table.from_pydict(
        {
            "problem": [row.problem for row in rows],
            "answer": [row.answer for row in rows],
            "images": [[{"bytes": png_bytes(row.image), "path": None}] for row in rows],
            "distractor": [row.distractor for row in rows],
            "question_type": [row.question_type for row in rows],
        },
        schema=RL_FEATURES.arrow_schema,
    )
    pq.write_table(table, path)


def write_rl_split(samples: list[SyntheticSample], path: str, image_size: int) -> None:
    """`write_rl_rows` for shapes-task samples drawn at ``image_size``."""
    write_rl_rows([task_row(sample, image_size) for sample in samples], path)


def write_sft_rows(
    rows: list[TaskRow], out_dir: str, format_prompt_path: str, vague: list[bool] | None = None
) -> str:
    """LLaMA-Factory sharegpt ``out_dir/sft.json``; images saved under ``out_dir/images/``.

    The user turn is the format prompt rendered on the problem, exactly what the RL rollout
    sees; image paths are relative to the json file. Every row also gets a text-only re-prompt
    record (``TaskRow.text_only_record``), as the Vision-SR1 cold-start set has: with only every
    second sample, the tiny model re-answered 0% of shape and 2% of position questions correctly
    from its own (correct) descriptions after SFT, so the visual reward could not tell good
    perceptions apart. ``vague[i]`` gives row i its vague description in its image record; its
    text-only record keeps the full description (the re-answerer learns to read complete
    perceptions only).
    """
    vague = vague if vague is not None else [False] * len(rows)
    if len(vague) != len(rows):
        raise ValueError(f"vague has {len(vague)} flags for {len(rows)} samples")
    format_prompt = load_format_prompt(format_prompt_path)
    os.makedirs(os.path.join(out_dir, "images"), exist_ok=True)
    records = []
    for index, (row, is_vague) in enumerate(zip(rows, vague)):
        relative_path = f"images/sft_{index:05d}.png"
        with open(os.path.join(out_dir, relative_path), "wb") as file:
            file.write(png_bytes(row.image))
        records.append(
            {
                "messages": [
                    {"role": "user", "content": format_prompt.render(content=row.problem)},
                    {"role": "assistant", "content": row.sft_response(is_vague)},
                ],
                "images": [relative_path],
            }
        )
        records.append(row.text_only_record())
    sft_path = os.path.join(out_dir, "sft.json")
    with open(sft_path, "w", encoding="utf-8") as file:
        json.dump(records, file, ensure_ascii=False, indent=1)
    return sft_path


def write_sft_file(
    samples: list[SyntheticSample],
    out_dir: str,
    format_prompt_path: str,
    image_size: int,
    vague: list[bool] | None = None,
) -> str:
    """`write_sft_rows` for shapes-task samples drawn at ``image_size``."""
    return write_sft_rows([task_row(sample, image_size) for sample in samples], out_dir, format_prompt_path, vague)


@dataclass(frozen=True)
class SyntheticDatasetFiles:
    """Paths written by ``write_synthetic_dataset``."""

    train: str
    val: str
    sft: str


def write_synthetic_dataset(
    out_dir: str,
    format_prompt_path: str,
    seed: int = 0,
    train_size: int = 2000,
    val_size: int = 200,
    sft_size: int = 3000,
    spec: SyntheticTaskSpec = SyntheticTaskSpec(),
) -> SyntheticDatasetFiles:
    """Writes ``train.parquet``, ``val.parquet`` (RL) and ``sft.json`` + ``images/`` (cold start)."""
    for name, value in (
        ("prior_strength", spec.prior_strength),
        ("train_prior_strength", spec.train_prior_strength),
        ("vague_description_rate", spec.vague_description_rate),
    ):
        if value is not None and not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {value}")
    # Its own random stream, so the rate never changes which scenes and answers the rows hold.
    vague = list(np.random.default_rng([seed, _VAGUE_STREAM]).random(sft_size) < spec.vague_description_rate)
    return write_task_dataset(
        out_dir,
        format_prompt_path,
        *([task_row(sample, spec.image_size) for sample in generate_split(size, seed, split, spec)]
          for size, split in ((train_size, "train"), (val_size, "val"), (sft_size, "sft"))),
        vague=vague,
    )


def write_task_dataset(
    out_dir: str,
    format_prompt_path: str,
    train: list[TaskRow],
    val: list[TaskRow],
    sft: list[TaskRow],
    vague: list[bool] | None = None,
) -> SyntheticDatasetFiles:
    """Writes ``train.parquet``, ``val.parquet`` (RL) and ``sft.json`` + ``images/`` (cold start)
    for any task's rows."""
    os.makedirs(out_dir, exist_ok=True)
    files = SyntheticDatasetFiles(
        train=os.path.join(out_dir, "train.parquet"),
        val=os.path.join(out_dir, "val.parquet"),
        sft=os.path.join(out_dir, "sft.json"),
    )
    write_rl_rows(train, files.train)
    write_rl_rows(val, files.val)
    write_sft_rows(sft, out_dir, format_prompt_path, vague)
    return files
