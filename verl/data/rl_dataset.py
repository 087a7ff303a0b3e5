"""RL prompts: rows of (question with ``<image>`` placeholders, answer, images) -> model inputs.

One row becomes two views of the same prompt, derived from one tokenisation so they cannot
disagree: ``raw_prompt_ids`` (one ``<|image_pad|>`` per image, what rollout engines take together
with the resized images) and ``input_ids`` (each pad expanded to one token per merged visual
patch, what the trainer's forward takes together with ``multi_modal_inputs``).
"""

import functools
import logging
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import datasets
import numpy as np
import pyarrow
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from transformers import PreTrainedTokenizerBase, ProcessorMixin

from verl.data.format_prompt import load_format_prompt
from verl.data.vision import (
    check_decodes,
    expand_image_tokens,
    image_size,
    load_image,
    merged_token_count,
    process_images,
    resize_image,
    resize_factor,
    resized_shape,
)

logger = logging.getLogger(__name__)

IMAGE_PLACEHOLDER = "<image>"
# Keys every item carries; a data column with one of these names would be overwritten.
ITEM_KEYS = (
    "input_ids",
    "attention_mask",
    "raw_prompt_ids",
    "images",
    "multi_modal_inputs",
    "ground_truth",
    "problem",
    "index",
)
TENSOR_KEYS = ("input_ids", "attention_mask")


@dataclass(frozen=True)
class LoadedTable:
    """Rows of a data source plus what error messages and relative image paths need."""

    rows: datasets.Dataset
    source: str
    """How errors name the data (file path or ``name@split``)."""
    base_dir: str | None
    """Directory that relative image paths are resolved against."""


def load_table(data_path: str) -> LoadedTable:
    """Reads a parquet / json / jsonl file, a ``save_to_disk`` directory, or ``name@split``.

    ``name@split``: ``name/{split}.parquet`` (or ``.jsonl``/``.json``) when ``name`` is a local
    directory, split ``split`` of a ``save_to_disk`` DatasetDict directory, else
    ``datasets.load_dataset(name, split=split)`` (hub or cache).

    The rows stay in the memory-mapped Arrow file ``datasets`` writes; the buffers Arrow
    allocated while converting the file are handed back to the OS here: its memory pool keeps
    them otherwise, ~2.4x the file's bytes of resident heap for the whole run
    (benchmarks/data_scale.py).
    """
    table = _load_table(data_path)
    pyarrow.default_memory_pool().release_unused()
    return table


def _load_table(data_path: str) -> LoadedTable:
    if "@" in data_path and not os.path.exists(data_path):
        name, split = data_path.rsplit("@", 1)
        if os.path.isdir(name):
            for extension in ("parquet", "jsonl", "json"):
                candidate = os.path.join(name, f"{split}.{extension}")
                if os.path.isfile(candidate):
                    return _load_table(candidate)
            if os.path.isfile(os.path.join(name, "dataset_dict.json")):
                splits = datasets.load_from_disk(name)
                if split not in splits:
                    raise ValueError(f"{data_path}: no split {split!r}; splits found: {sorted(splits)}")
                return LoadedTable(splits[split], data_path, os.path.abspath(name))
            raise FileNotFoundError(
                f"{data_path}: directory {name} has no {split}.parquet, {split}.jsonl, {split}.json "
                f"or save_to_disk DatasetDict; files found: {sorted(os.listdir(name))}"
            )
        return LoadedTable(datasets.load_dataset(name, split=split), data_path, None)
    if os.path.isdir(data_path):
        loaded = datasets.load_from_disk(data_path)
        if isinstance(loaded, datasets.DatasetDict):
            raise ValueError(
                f"{data_path} holds several splits {sorted(loaded)}; name one as {data_path}@<split>"
            )
        return LoadedTable(loaded, data_path, os.path.abspath(data_path))
    if not os.path.isfile(data_path):
        raise FileNotFoundError(f"data file not found: {data_path}")
    extension = data_path.rsplit(".", 1)[-1].lower()
    builders = {"parquet": "parquet", "json": "json", "jsonl": "json"}
    if extension not in builders:
        raise ValueError(f"{data_path}: unsupported file type .{extension}; use parquet, json or jsonl")
    _check_readable(data_path, extension)
    try:
        rows = datasets.load_dataset(builders[extension], data_files=data_path, split="train")
    except Exception as error:  # datasets wraps parser errors in several exception types
        raise ValueError(f"{data_path}: cannot read {extension} file: {_root_cause(error)}") from error
    if len(rows) == 0:
        raise ValueError(f"{data_path}: the {extension} file has no rows")
    return LoadedTable(rows, data_path, os.path.dirname(os.path.abspath(data_path)))


def _check_readable(path: str, extension: str) -> None:
    """Problems `datasets` reports only as a generic failure, named here before it is called."""
    try:
        with open(path, "rb") as f:
            first = f.read(4)
    except OSError as error:
        raise ValueError(f"{path}: cannot open the file: {error.strerror or error}") from error
    if not first:
        raise ValueError(f"{path}: the file is empty (0 bytes)")
    if extension == "parquet":
        import pyarrow.parquet as pq

        try:
            num_rows = pq.read_metadata(path).num_rows
        except Exception as error:  # pyarrow raises ArrowInvalid / OSError for non-parquet bytes
            raise ValueError(f"{path}: not a readable parquet file: {error}") from error
        if num_rows == 0:
            raise ValueError(f"{path}: the parquet file has no rows")


def _root_cause(error: BaseException) -> str:
    """`Type: message` of the innermost exception: `datasets` wraps the parser's error in
    generic ones ("An error occurred while generating the dataset")."""
    while (inner := error.__cause__ or error.__context__) is not None:
        error = inner
    return f"{type(error).__name__}: {error}"


def _undecoded_images(rows: datasets.Dataset, image_key: str) -> datasets.Dataset:
    """Turns off PIL decoding of an ``Image`` column: the dataset reads headers and decodes itself."""
    feature = rows.features[image_key]
    if isinstance(feature, datasets.Image):
        return rows.cast_column(image_key, datasets.Image(decode=False))
    inner = getattr(feature, "feature", None)
    if isinstance(inner, datasets.Image):
        return rows.cast_column(image_key, datasets.List(datasets.Image(decode=False)))
    return rows


def split_image_placeholders(text: str) -> list[dict[str, str]]:
    """Chat content items: ``<image>`` becomes ``{"type": "image"}``, the rest text items."""
    content: list[dict[str, str]] = []
    for position, piece in enumerate(text.split(IMAGE_PLACEHOLDER)):
        if position > 0:
            content.append({"type": "image"})
        if piece:
            content.append({"type": "text", "text": piece})
    return content


@dataclass(frozen=True)
class _CheckedRow:
    """Fields of one row after type and consistency checks."""

    question: str
    answer: str
    image_objects: list[Any]


class RLDataset(Dataset):
    """Prompts for RL rollouts; see the module docstring for the two token views."""

    def __init__(
        self,
        data_path: str,
        tokenizer: PreTrainedTokenizerBase,
        processor: ProcessorMixin | None,
        max_prompt_length: int,
        min_pixels: int,
        max_pixels: int,
        prompt_key: str = "problem",
        answer_key: str = "answer",
        image_key: str | None = "images",
        format_prompt: str | None = None,
        filter_overlong_prompts: bool = True,
        system_prompt: str | None = None,
        skip_bad_rows: bool = False,
    ):
        """
        Args:
            data_path: parquet / json / jsonl file, ``save_to_disk`` dir, or ``name@split``.
            processor: Qwen2.5-VL processor; None only for text-only data (``image_key=None``).
            max_prompt_length: longest prompt in tokens, image tokens expanded.
            min_pixels, max_pixels: image area range after resizing (see ``verl.data.vision``).
            image_key: column of image lists; None for text-only data.
            format_prompt: jinja file rendered with ``content=<question>``; None keeps the question.
            filter_overlong_prompts: drop longer prompts (logged) instead of raising.
            system_prompt: system message; None keeps the chat template's default.
            skip_bad_rows: a row that fails its checks (field types, placeholders, an unreadable or
                undecodable image) is left out and recorded in ``bad_rows`` (row -> error) instead
                of stopping the build; for evaluation, where one broken sample should not stop a
                benchmark. Training keeps the default: a bad row stops the run, naming it.
        """
        table = load_table(data_path)
        self.source = table.source
        self.base_dir = table.base_dir
        self.tokenizer = tokenizer
        self.processor = processor
        self.prompt_key = prompt_key
        self.answer_key = answer_key
        self.image_key = image_key
        self.max_prompt_length = max_prompt_length
        self.min_pixels = min_pixels
        self.max_pixels = max_pixels
        self.system_prompt = system_prompt
        self.format_prompt = load_format_prompt(format_prompt) if format_prompt is not None else None

        required = [prompt_key, answer_key] + ([image_key] if image_key is not None else [])
        missing = [column for column in required if column not in table.rows.column_names]
        if missing:
            raise ValueError(
                f"{self.source}: missing column(s) {missing}; columns found: {table.rows.column_names}"
            )
        self.extra_keys = [column for column in table.rows.column_names if column not in required]
        clashing = [column for column in self.extra_keys if column in ITEM_KEYS]
        if clashing:
            raise ValueError(
                f"{self.source}: column(s) {clashing} clash with the item keys {ITEM_KEYS}; rename them"
            )
        if image_key is not None:
            if processor is None:
                raise ValueError(f"{self.source}: image column {image_key!r} needs a processor, got None")
            self.factor = resize_factor(processor.image_processor)
            self.image_token_id: int | None = processor.image_token_id
            self.merge_size: int | None = processor.image_processor.merge_size
            self.rows = _undecoded_images(table.rows, image_key)
        else:
            self.factor = 0  # never used: no images
            self.image_token_id = None
            self.merge_size = None
            self.rows = table.rows

        self.bad_rows: dict[int, str] = {}
        lengths = []
        for row_index in range(len(self.rows)):
            try:
                lengths.append(self._expanded_length(row_index))
            except ValueError as error:
                if not skip_bad_rows:
                    raise
                self.bad_rows[row_index] = str(error)
                lengths.append(-1)
        self.prompt_lengths = np.array(lengths, dtype=np.int64)
        if image_key is not None:
            self._check_images_decode(skip_bad_rows)
        if self.bad_rows:
            logger.warning("%s: skipped %d bad row(s) of %d: %s", self.source, len(self.bad_rows), len(self.rows),
                           next(iter(self.bad_rows.values())))
        overlong = np.flatnonzero(self.prompt_lengths > max_prompt_length)
        if len(overlong) and not filter_overlong_prompts:
            row = int(overlong[0])
            raise ValueError(
                f"{self.source} row {row}: prompt is {self.prompt_lengths[row]} tokens (image tokens "
                f"expanded), over max_prompt_length={max_prompt_length}; {len(overlong)} row(s) in all. "
                "Raise max_prompt_length, lower max_pixels, or set filter_overlong_prompts=True"
            )
        if len(overlong):
            logger.warning(
                "%s: dropped %d of %d prompts longer than max_prompt_length=%d (image tokens expanded)",
                self.source,
                len(overlong),
                len(self.rows),
                max_prompt_length,
            )
        usable = self.prompt_lengths <= max_prompt_length
        usable[list(self.bad_rows)] = False
        self.row_indices = np.flatnonzero(usable)
        if len(self.row_indices) == 0:
            raise ValueError(
                f"{self.source}: no usable row: {len(self.bad_rows)} bad, {len(overlong)} longer than "
                f"max_prompt_length={max_prompt_length}"
            )

    def _check_images_decode(self, skip_bad_rows: bool) -> None:
        """Decodes every image once, now, so a corrupt one stops the run before Ray starts, naming
        its row, rather than when its row is drawn hours in (PIL decodes outside the GIL, so
        threads share the work). The first failing row in file order is reported; with
        `skip_bad_rows` every failing row is recorded in `bad_rows` instead."""

        def decode_row(row_index: int) -> str | None:
            if row_index in self.bad_rows:
                return None
            images = self.rows[row_index][self.image_key] or []
            try:
                for position, image_object in enumerate(images):
                    check_decodes(image_object, self._where(row_index, f"{self.image_key}[{position}]"), self.base_dir)
            except ValueError as error:
                if not skip_bad_rows:
                    raise
                return str(error)
            return None

        with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
            # map re-raises the first failure in row order
            for row_index, error in enumerate(pool.map(decode_row, range(len(self.rows)))):
                if error is not None:
                    self.bad_rows[row_index] = error

    def __len__(self) -> int:
        return len(self.row_indices)

    def _where(self, row_index: int, field: str) -> str:
        return f"{self.source} row {row_index} field {field!r}"

    def _checked_row(self, row_index: int, row: dict[str, Any]) -> _CheckedRow:
        question = row[self.prompt_key]
        if not isinstance(question, str):
            raise ValueError(
                f"{self._where(row_index, self.prompt_key)}: expected a string, got {type(question).__name__}"
            )
        answer = row[self.answer_key]
        if not isinstance(answer, str):
            raise ValueError(
                f"{self._where(row_index, self.answer_key)}: expected a string answer, got "
                f"{type(answer).__name__} {answer!r}"
            )
        image_objects = [] if self.image_key is None or row[self.image_key] is None else row[self.image_key]
        if not isinstance(image_objects, list):
            raise ValueError(
                f"{self._where(row_index, self.image_key)}: expected a list of images, "
                f"got {type(image_objects).__name__}"
            )
        num_placeholders = question.count(IMAGE_PLACEHOLDER)
        if num_placeholders != len(image_objects):
            raise ValueError(
                f"{self._where(row_index, self.prompt_key)}: {num_placeholders} {IMAGE_PLACEHOLDER} "
                f"placeholder(s) but {len(image_objects)} image(s) in {self.image_key!r}"
            )
        return _CheckedRow(question, answer, image_objects)

    def _raw_prompt_ids(self, question: str) -> list[int]:
        """Chat-templated prompt, one image pad token per image."""
        text = self.format_prompt.render(content=question) if self.format_prompt is not None else question
        # Plain-string content where there is no image: text-only chat templates accept only strings.
        content = split_image_placeholders(text) if IMAGE_PLACEHOLDER in text else text
        messages = [{"role": "user", "content": content}]
        if self.system_prompt is not None:
            messages.insert(0, {"role": "system", "content": self.system_prompt})
        templater = self.processor if self.processor is not None else self.tokenizer
        prompt = templater.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return self.tokenizer.encode(prompt, add_special_tokens=False)

    def _expanded_length(self, row_index: int) -> int:
        """Prompt length with image tokens expanded, from image headers only (no pixel decoding).

        Also checks that the tokenised prompt holds one image token per image: text that
        tokenises to the image token (a literal `<|image_pad|>` typed in a question) would
        otherwise fail only when its row is drawn, hours into a run, or never in a short one."""
        checked = self._checked_row(row_index, self.rows[row_index])
        raw_prompt_ids = self._raw_prompt_ids(checked.question)
        if self.image_token_id is not None:
            image_tokens = raw_prompt_ids.count(self.image_token_id)
            if image_tokens != len(checked.image_objects):
                token = self.tokenizer.convert_ids_to_tokens(self.image_token_id)
                raise ValueError(
                    f"{self._where(row_index, self.prompt_key)}: the tokenised prompt has {image_tokens} image "
                    f"token(s) {token} for {len(checked.image_objects)} image(s) in {self.image_key!r}; the text "
                    f"(or the format prompt) contains {token} itself: remove it, images go in as {IMAGE_PLACEHOLDER}"
                )
        length = len(raw_prompt_ids)
        for position, image_object in enumerate(checked.image_objects):
            where = self._where(row_index, f"{self.image_key}[{position}]")
            width, height = image_size(image_object, where, self.base_dir)
            shape = resized_shape(width, height, self.min_pixels, self.max_pixels, self.factor)
            length += merged_token_count(*shape, self.factor) - 1
        return length

    def __getitem__(self, item: int) -> dict[str, Any]:
        row_index = int(self.row_indices[item])
        row = self.rows[row_index]
        checked = self._checked_row(row_index, row)
        raw_prompt_ids = self._raw_prompt_ids(checked.question)
        images = [
            resize_image(
                load_image(
                    image_object, self._where(row_index, f"{self.image_key}[{position}]"), self.base_dir
                ),
                self.min_pixels,
                self.max_pixels,
                self.factor,
            )
            for position, image_object in enumerate(checked.image_objects)
        ]
        multi_modal_inputs: dict[str, torch.Tensor] = (
            process_images(self.processor.image_processor, images, self.min_pixels, self.max_pixels) if images else {}
        )
        input_ids = raw_prompt_ids
        if self.image_token_id is not None:
            image_grid_thw = multi_modal_inputs.get("image_grid_thw", torch.zeros((0, 3), dtype=torch.long))
            try:
                input_ids = expand_image_tokens(
                    raw_prompt_ids, image_grid_thw, self.image_token_id, self.merge_size
                )
            except ValueError as error:  # e.g. a literal <|image_pad|> typed into the question
                raise ValueError(f"{self._where(row_index, self.prompt_key)}: {error}") from error
        return {
            "input_ids": torch.tensor(input_ids, dtype=torch.long),
            "attention_mask": torch.ones(len(input_ids), dtype=torch.long),
            "raw_prompt_ids": raw_prompt_ids,
            "images": images,
            "multi_modal_inputs": multi_modal_inputs,
            "ground_truth": checked.answer,
            "problem": checked.question.replace(IMAGE_PLACEHOLDER, "").strip(),
            "index": row_index,
            **{key: row[key] for key in self.extra_keys},
        }


def collate_rl(
    features: list[dict[str, Any]], pad_token_id: int, max_prompt_length: int
) -> tuple[dict[str, torch.Tensor], dict[str, np.ndarray]]:
    """Batches ``RLDataset`` items.

    Returns (tensors, non_tensors): ``input_ids`` and ``attention_mask`` LEFT-padded to
    (batch, max_prompt_length); every other key as a 1-D object array of length batch.
    """
    batch_size = len(features)
    input_ids = torch.full((batch_size, max_prompt_length), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((batch_size, max_prompt_length), dtype=torch.long)
    keys = list(features[0])
    for position, feature in enumerate(features):
        if list(feature) != keys:
            raise ValueError(f"batch item {position} has keys {list(feature)}, item 0 has {keys}")
        length = len(feature["input_ids"])
        if length > max_prompt_length:
            raise ValueError(
                f"batch item {position} (row {feature.get('index')}) has {length} prompt tokens, "
                f"over max_prompt_length={max_prompt_length}"
            )
        input_ids[position, max_prompt_length - length :] = feature["input_ids"]
        attention_mask[position, max_prompt_length - length :] = feature["attention_mask"]
    non_tensors: dict[str, np.ndarray] = {}
    for key in keys:
        if key in TENSOR_KEYS:
            continue
        column = np.empty(batch_size, dtype=object)
        for position, feature in enumerate(features):
            column[position] = feature[key]
        non_tensors[key] = column
    return {"input_ids": input_ids, "attention_mask": attention_mask}, non_tensors


class ResumableSampler(Sampler[int]):
    """Row order per epoch from a ``torch.Generator`` seeded with ``seed + epoch``, plus a position.

    ``epoch`` and ``offset`` (rows already handed out this epoch) are advanced by
    ``ResumableDataLoader`` as batches are consumed; iteration starts at ``offset``.
    """

    def __init__(self, num_samples: int, shuffle: bool, seed: int):
        self.num_samples = num_samples
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0
        self.offset = 0

    def epoch_order(self, epoch: int) -> list[int]:
        """All row positions in the order of ``epoch``."""
        if not self.shuffle:
            return list(range(self.num_samples))
        generator = torch.Generator()
        generator.manual_seed(self.seed + epoch)
        return torch.randperm(self.num_samples, generator=generator).tolist()

    def __iter__(self) -> Iterator[int]:
        return iter(self.epoch_order(self.epoch)[self.offset :])

    def __len__(self) -> int:
        return self.num_samples

    def state_dict(self) -> dict[str, int | bool]:
        return {
            "epoch": self.epoch,
            "offset": self.offset,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "num_samples": self.num_samples,
        }

    def load_state_dict(self, state: dict[str, int | bool]) -> None:
        """Restores a position; refuses one saved for another dataset size, seed or shuffle flag."""
        for key in ("seed", "shuffle", "num_samples"):
            if state[key] != getattr(self, key):
                raise ValueError(
                    f"dataloader state was saved with {key}={state[key]}, this run has "
                    f"{key}={getattr(self, key)}; the saved position does not apply to this data order"
                )
        self.epoch = int(state["epoch"])
        self.offset = int(state["offset"])


class ResumableDataLoader(DataLoader):
    """DataLoader whose position (epoch, rows consumed) survives a checkpoint.

    The position counts batches handed to the caller, not batches prefetched by workers, so a
    state saved after step k resumes exactly at batch k+1. Starting a new iteration mid-epoch
    continues the current epoch.
    """

    sampler: ResumableSampler

    def __iter__(self) -> Iterator[Any]:
        for batch in super().__iter__():
            self.sampler.offset += self.batch_size
            yield batch
        self.sampler.epoch += 1
        self.sampler.offset = 0

    def state_dict(self) -> dict[str, int | bool]:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict[str, int | bool]) -> None:
        self.sampler.load_state_dict(state)


def make_rl_dataloader(
    dataset: RLDataset,
    batch_size: int,
    shuffle: bool,
    seed: int,
    drop_last: bool,
    pad_token_id: int,
    max_prompt_length: int,
    num_workers: int = 0,
) -> ResumableDataLoader:
    """Seeded, resumable loader of ``collate_rl`` batches (see ``ResumableDataLoader``)."""
    return ResumableDataLoader(
        dataset,
        batch_size=batch_size,
        sampler=ResumableSampler(len(dataset), shuffle, seed),
        drop_last=drop_last,
        collate_fn=functools.partial(
            collate_rl, pad_token_id=pad_token_id, max_prompt_length=max_prompt_length
        ),
        num_workers=num_workers,
    )
