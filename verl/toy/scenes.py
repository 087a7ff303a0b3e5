"""A second synthetic VQA task, built to differ from the shapes task (`synthetic.py`) where a
perception can be learned by a shortcut: the transfer check of the recipe.

What changes against the shapes task:
- images are small and of varied size and aspect (56-112 px a side, near Qwen2.5-VL's processor
  minimum), on a textured or noisy background (stripes, checks, per-pixel noise or a plain tint);
- 1-4 objects of 5 kinds (circle, square, triangle, diamond, cross) in 7 colours (orange beside
  red and yellow, purple beside blue, cyan beside green and blue), of varied size, placed at
  random pixel positions that ignore the 14/28-pixel patch grid (no slots);
- six question types, two of them yes/no:

      color     "What color is the diamond?"                          -> "purple"
      shape     "What shape is the orange object?"                    -> "cross"
      count     "How many objects are in the image?"                  -> "3"
      exists    "Is there a cyan circle in the image?"                -> "no"
      left_of   "Is the red square to the left of the blue triangle?" -> "yes"
      size      "Which is bigger, the circle or the cross?"           -> "cross"

Objects in one image differ in kind and in colour, so every question has one answer. The SFT split
carries a language prior as the shapes task does (one prior answer per question text, drawn with
`prior_strength`); val and the RL train split are uniform, and `distractor` flags the val rows
whose answer is not the prior. Descriptions list the objects left to right with a size word
(small / medium / large by side length), so a description answers every question on its own.

The rows go through the shapes task's writers (`synthetic.write_task_dataset`): the same parquet
columns, SFT file and text-only re-prompt records, so the recipe runs on this task unchanged:
`SYNTHETIC_ARGS="--task scenes" DATA=data/tiny_scenes bash train_examples/0-tiny_cpu_selfReward.sh`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from verl.toy.synthetic import (
    Split,
    SyntheticDatasetFiles,
    TaskRow,
    draw_answer,
    score_description,
    write_task_dataset,
)

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 25, 30),
    "orange": (245, 130, 10),
    "yellow": (235, 205, 20),
    "green": (35, 150, 45),
    "cyan": (20, 190, 200),
    "blue": (35, 60, 220),
    "purple": (140, 40, 170),
}
KINDS = ("circle", "square", "triangle", "diamond", "cross")
QUESTION_TYPES = ("color", "shape", "count", "exists", "left_of", "size")
COUNTS = ("1", "2", "3", "4")
YES_NO = ("yes", "no")
BACKGROUNDS = ("plain", "stripes", "checks", "noise")
SIZE_WORDS = ((17, "small"), (23, "medium"), (10**6, "large"))  # side <= bound -> word

# The SFT split's language prior: one answer per question text.
PRIOR_COLOR_OF_KIND = {"circle": "red", "square": "blue", "triangle": "green", "diamond": "purple", "cross": "orange"}
PRIOR_KIND_OF_COLOR = {"red": "circle", "orange": "cross", "yellow": "circle", "green": "triangle",
                       "cyan": "square", "blue": "square", "purple": "diamond"}
PRIOR_COUNT = "2"
PRIOR_YES_NO = "yes"

_SPLIT_STREAMS = {"train": 10, "val": 11, "sft": 12}


@dataclass(frozen=True)
class SceneTaskSpec:
    """Knobs of the scenes task."""

    min_side: int = 56
    max_side: int = 112
    """Image width and height are drawn independently from [min_side, max_side] pixels."""
    prior_strength: float = 0.7
    """Probability that an SFT row's answer is the prior answer of its question text."""


@dataclass(frozen=True)
class SceneObject:
    kind: str
    color: str
    center_x: float
    center_y: float
    side: int

    @property
    def size_word(self) -> str:
        return next(word for bound, word in SIZE_WORDS if self.side <= bound)


@dataclass(frozen=True)
class Scene:
    width: int
    height: int
    background: str
    background_seed: int
    objects: tuple[SceneObject, ...]  # left to right


@dataclass(frozen=True)
class SceneSample:
    scene: Scene
    question_type: str
    question: str
    answer: str
    prior_answer: str
    subjects: tuple[SceneObject, ...]  # the objects the question names (none for count/exists)
    asked: tuple[str, str] | None = None  # exists: the (colour, kind) asked about, present or not

    @property
    def distractor(self) -> bool:
        return self.answer != self.prior_answer


def _place(rng: np.random.Generator, width: int, height: int, sides: list[int]) -> list[tuple[float, float]] | None:
    """Non-overlapping centres (a 2-pixel gap) for squares of `sides`, anywhere in the image;
    None when rejection sampling gives up (the caller redraws the scene)."""
    centres: list[tuple[float, float, int]] = []
    for side in sides:
        for _ in range(200):
            x = rng.uniform(side / 2 + 1, width - side / 2 - 1)
            y = rng.uniform(side / 2 + 1, height - side / 2 - 1)
            if all(abs(x - cx) > (side + cs) / 2 + 2 or abs(y - cy) > (side + cs) / 2 + 2 for cx, cy, cs in centres):
                centres.append((x, y, side))
                break
        else:
            return None
    return [(x, y) for x, y, _ in centres]


def _scene(
    rng: np.random.Generator, spec: SceneTaskSpec, count: int, required: list[tuple[str, str]], exclude: tuple[str, str] | None
) -> Scene:
    """A scene of `count` objects with distinct kinds and colours that contains every (kind,
    colour) of `required` and, when given, no object of `exclude`'s kind and colour together."""
    while True:
        width, height = (int(rng.integers(spec.min_side, spec.max_side + 1)) for _ in range(2))
        kinds = [kind for kind, _ in required] + [k for k in rng.permutation(KINDS) if k not in {k for k, _ in required}]
        colors = [color for _, color in required] + [
            c for c in rng.permutation(list(COLORS)) if c not in {c for _, c in required}
        ]
        pairs = list(zip(kinds[:count], colors[:count]))
        if exclude is not None and tuple(exclude) in pairs:
            continue
        sides = [int(rng.integers(12, min(30, min(width, height) // 2) + 1)) for _ in range(count)]
        centres = _place(rng, width, height, sides)
        if centres is None:
            continue
        objects = [SceneObject(str(k), str(c), x, y, s) for (k, c), (x, y), s in zip(pairs, centres, sides)]
        return Scene(
            width, height, str(BACKGROUNDS[rng.integers(len(BACKGROUNDS))]), int(rng.integers(2**31)),
            tuple(sorted(objects, key=lambda o: o.center_x)),
        )


def _find(scene: Scene, kind: str | None = None, color: str | None = None) -> SceneObject:
    return next(o for o in scene.objects if (kind is None or o.kind == kind) and (color is None or o.color == color))


def make_sample(rng: np.random.Generator, question_type: str, split: Split, spec: SceneTaskSpec) -> SceneSample:
    """Draws one question of `question_type` and a scene that answers it."""
    strength = spec.prior_strength if split == "sft" else None
    count = int(rng.integers(1, len(COUNTS) + 1))
    if question_type == "color":
        kind = KINDS[rng.integers(len(KINDS))]
        prior = PRIOR_COLOR_OF_KIND[kind]
        answer = draw_answer(rng, tuple(COLORS), prior, strength)
        scene = _scene(rng, spec, count, [(kind, answer)], None)
        return SceneSample(scene, question_type, f"What color is the {kind}?", answer, prior, (_find(scene, kind),))
    if question_type == "shape":
        color = list(COLORS)[rng.integers(len(COLORS))]
        prior = PRIOR_KIND_OF_COLOR[color]
        answer = draw_answer(rng, KINDS, prior, strength)
        scene = _scene(rng, spec, count, [(answer, color)], None)
        return SceneSample(scene, question_type, f"What shape is the {color} object?", answer, prior,
                           (_find(scene, color=color),))
    if question_type == "count":
        answer = draw_answer(rng, COUNTS, PRIOR_COUNT, strength)
        scene = _scene(rng, spec, int(answer), [], None)
        return SceneSample(scene, question_type, "How many objects are in the image?", answer, PRIOR_COUNT, ())
    if question_type == "exists":
        kind, color = KINDS[rng.integers(len(KINDS))], list(COLORS)[rng.integers(len(COLORS))]
        answer = draw_answer(rng, YES_NO, PRIOR_YES_NO, strength)
        required = [(kind, color)] if answer == "yes" else []
        scene = _scene(rng, spec, count, required, None if answer == "yes" else (kind, color))
        return SceneSample(scene, question_type, f"Is there a {color} {kind} in the image?", answer, PRIOR_YES_NO, (),
                           (color, kind))
    if question_type == "left_of":
        answer = draw_answer(rng, YES_NO, PRIOR_YES_NO, strength)
        while True:
            scene = _scene(rng, spec, max(count, 2), [], None)
            first, second = (scene.objects[i] for i in rng.permutation(len(scene.objects))[:2])
            # Clearly apart horizontally: "left of" must not hinge on a pixel.
            if abs(first.center_x - second.center_x) >= 6 and (first.center_x < second.center_x) == (answer == "yes"):
                break
        question = f"Is the {first.color} {first.kind} to the left of the {second.color} {second.kind}?"
        return SceneSample(scene, question_type, question, answer, PRIOR_YES_NO, (first, second))
    if question_type == "size":
        while True:
            scene = _scene(rng, spec, max(count, 2), [], None)
            first, second = (scene.objects[i] for i in rng.permutation(len(scene.objects))[:2])
            if first.size_word != second.size_word:  # the description's size words decide it
                break
        answer = first.kind if first.side > second.side else second.kind
        prior = first.kind  # the prior: the first-named object
        if strength is not None and (answer == prior) != (rng.random() < strength):
            first, second = second, first  # rename the pair so the prior holds with `strength`
            prior = first.kind
        question = f"Which is bigger, the {first.kind} or the {second.kind}?"
        return SceneSample(scene, question_type, question, answer, prior, (first, second))
    raise ValueError(f"unknown question type {question_type!r}; expected one of {QUESTION_TYPES}")


def generate_split(num_rows: int, seed: int, split: Split, spec: SceneTaskSpec = SceneTaskSpec()) -> list[SceneSample]:
    """`num_rows` samples; question types round-robin (each type num_rows/6, +-1 rows)."""
    if split not in _SPLIT_STREAMS:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(_SPLIT_STREAMS)}")
    rng = np.random.default_rng([seed, _SPLIT_STREAMS[split]])
    return [make_sample(rng, QUESTION_TYPES[i % len(QUESTION_TYPES)], split, spec) for i in range(num_rows)]


def render(scene: Scene) -> Image.Image:
    """The scene's RGB image: its background texture, then its objects (no anti-aliasing)."""
    rng = np.random.default_rng(scene.background_seed)
    tint = rng.integers(200, 256, size=3)
    pixels = np.broadcast_to(tint, (scene.height, scene.width, 3)).astype(np.int16).copy()
    ys, xs = np.mgrid[0 : scene.height, 0 : scene.width]
    if scene.background == "stripes":
        period, angle = int(rng.integers(4, 10)), rng.uniform(0, np.pi)
        pixels[((xs * np.cos(angle) + ys * np.sin(angle)) // period).astype(int) % 2 == 0] -= 35
    elif scene.background == "checks":
        cell = int(rng.integers(3, 9))
        pixels[((xs // cell) + (ys // cell)) % 2 == 0] -= 30
    elif scene.background == "noise":
        pixels += rng.integers(-40, 41, size=pixels.shape).astype(np.int16)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        half = obj.side / 2
        left, top, right, bottom = obj.center_x - half, obj.center_y - half, obj.center_x + half, obj.center_y + half
        fill = COLORS[obj.color]
        if obj.kind == "circle":
            draw.ellipse((left, top, right, bottom), fill=fill)
        elif obj.kind == "square":
            draw.rectangle((left, top, right, bottom), fill=fill)
        elif obj.kind == "triangle":
            draw.polygon([(obj.center_x, top), (left, bottom), (right, bottom)], fill=fill)
        elif obj.kind == "diamond":
            draw.polygon([(obj.center_x, top), (right, obj.center_y), (obj.center_x, bottom), (left, obj.center_y)], fill=fill)
        else:  # cross: two bars a third of the side wide
            bar = obj.side / 6
            draw.rectangle((obj.center_x - bar, top, obj.center_x + bar, bottom), fill=fill)
            draw.rectangle((left, obj.center_y - bar, right, obj.center_y + bar), fill=fill)
    return image


def describe(sample: SceneSample) -> str:
    """The objects left to right with a size word, e.g. "From left to right, the image shows a
    small red circle and a large blue cross."."""
    parts = [f"a {o.size_word} {o.color} {o.kind}" for o in sample.scene.objects]
    listing = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return f"From left to right, the image shows {listing}."




DESCRIBED_OBJECT = re.compile(
    rf"\b(?P<where>{'|'.join(word for _, word in SIZE_WORDS)}) (?P<color>{'|'.join(COLORS)}) (?P<kind>{'|'.join(KINDS)})\b"
)


def description_accuracy(response: str, sample: SceneSample) -> dict[str, bool]:
    """`score_description` on the scenes task: size word, colour and kind of each object, left to right."""
    truth = [(o.color, o.kind, o.size_word) for o in sample.scene.objects]
    return score_description(response, DESCRIBED_OBJECT, truth)

def vague_description(sample: SceneSample) -> str:
    count = len(sample.scene.objects)
    return f"The image shows {count} {'object' if count == 1 else 'objects'}."


def reasoning(sample: SceneSample) -> str:
    """Short reasoning from the description to the answer."""
    kind = sample.question_type
    if kind == "color":
        (obj,) = sample.subjects
        return f"The question asks for the color of the {obj.kind}. The {obj.kind} is {obj.color}."
    if kind == "shape":
        (obj,) = sample.subjects
        return f"The question asks which object is {obj.color}. The {obj.color} object is a {obj.kind}."
    if kind == "count":
        return f"The question asks how many objects there are. I count {sample.answer}."
    if kind == "exists":
        color, asked_kind = sample.asked
        present = "lists" if sample.answer == "yes" else "does not list"
        return f"The question asks whether there is a {color} {asked_kind}. The description {present} one."
    if kind == "left_of":
        first, second = sample.subjects
        order = "comes before" if sample.answer == "yes" else "comes after"
        return f"Reading left to right, the {first.color} {first.kind} {order} the {second.color} {second.kind}."
    first, second = sample.subjects
    return f"The {first.kind} is {first.size_word} and the {second.kind} is {second.size_word}."


def task_row(sample: SceneSample) -> TaskRow:
    return TaskRow(
        question=sample.question, answer=sample.answer, question_type=sample.question_type,
        distractor=sample.distractor, image=render(sample.scene), description=describe(sample),
        vague_description=vague_description(sample), reasoning=reasoning(sample),
    )


def write_scenes_dataset(
    out_dir: str, format_prompt_path: str, seed: int = 0, train_size: int = 2000, val_size: int = 200,
    sft_size: int = 3000, spec: SceneTaskSpec = SceneTaskSpec(),
) -> SyntheticDatasetFiles:
    """`train.parquet`, `val.parquet` and `sft.json` + `images/`, as `write_synthetic_dataset` writes them."""
    if not 0.0 <= spec.prior_strength <= 1.0:
        raise ValueError(f"prior_strength must be in [0, 1], got {spec.prior_strength}")
    if not 28 <= spec.min_side <= spec.max_side:
        raise ValueError(f"need 28 <= min_side <= max_side, got {spec.min_side}, {spec.max_side}")
    return write_task_dataset(
        out_dir, format_prompt_path,
        *([task_row(sample) for sample in generate_split(size, seed, split, spec)]
          for size, split in ((train_size, "train"), (val_size, "val"), (sft_size, "sft"))),
    )
