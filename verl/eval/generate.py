"""Generate benchmark responses with a rollout engine and write them as JSON lines.

    python3 -m verl.eval.generate --model_path DIR --data FILE_OR_NAME@SPLIT --output OUT.jsonl

One line per response, the reference's record layout (``dataset_index``, ``prompt``,
``response``) plus ``sample_index``, ``ground_truth``, ``problem`` (question without ``<image>``),
``response_length`` (tokens, EOS included), ``finished`` (False: cut at max_response_length) and
every JSON-typed extra data column (e.g. ``question_type``, ``distractor``), which
``verl.eval.score`` can group by.

``--blank_images`` answers the same prompts with every image replaced by a blank image of the
same size (the blank-image control, ``verl.rewards.vision_control``); ``verl.eval.score
--blank_input`` pairs that file with the normal one.

Prompts are built by ``RLDataset`` (format prompt, chat template, image resizing with the shared
min/max pixels) exactly as in training validation. Each batch of prompts is ONE
``RolloutEngine.generate`` call; its records are appended with one write and an fsync, so a crash
loses at most the batch in flight. Re-running the same command resumes: prompts whose n responses
are already in OUT are skipped, and a torn tail left by a crash is cut off first. The generation
settings are kept in ``OUT.generation.json``; resuming with different settings is refused.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import tempfile
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import Any

import datasets
from tqdm import tqdm
from transformers import AutoProcessor, AutoTokenizer, PreTrainedTokenizerBase

from verl.data.rl_dataset import IMAGE_PLACEHOLDER, RLDataset
from verl.data.vision import blank_like
from verl.utils.cli_exit import exit_cleanly
from verl.utils.model_source import check_model_path
from verl.workers.rollout import ENGINE_NAMES, GenerationRequest, RolloutEngine, SamplingConfig, make_rollout_engine

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_FORMAT_PROMPT = str(REPO_ROOT / "configs" / "format_prompt" / "sr1.jinja")
# The reference's data range (DataConfig defaults): 512x512 to 2048x2048 pixels.
DEFAULT_MIN_PIXELS = 262144
DEFAULT_MAX_PIXELS = 4194304
# The GPU recipe's response cap (configs/qwen2_5_vl_7b_selfReward.yaml data.max_response_length):
# an eval cuts responses where the trainer's validation does (tests/eval/test_caps.py checks it).
DEFAULT_MAX_RESPONSE_LENGTH = 2048

RECORD_KEYS = (
    "dataset_index",
    "sample_index",
    "prompt",
    "response",
    "ground_truth",
    "problem",
    "response_length",
    "finished",
)
_JSON_VALUE_DTYPES = ("bool", "string", "large_string") + tuple(
    f"{kind}{bits}" for kind in ("int", "uint") for bits in (8, 16, 32, 64)
) + ("float16", "float32", "float64")


def sidecar_path(output_path: str, suffix: str) -> str:
    """``OUT.jsonl`` -> ``OUT{suffix}`` (e.g. ``OUT.summary.json``); other names get the suffix appended."""
    base = output_path[: -len(".jsonl")] if output_path.endswith(".jsonl") else output_path
    return base + suffix


@dataclass(frozen=True)
class GenerationSettings:
    """Everything that determines the responses; a resumed run must match the stored copy."""

    model_path: str
    data: str
    format_prompt: str | None
    system_prompt: str | None
    prompt_key: str
    answer_key: str
    image_key: str | None
    min_pixels: int
    max_pixels: int
    max_prompt_length: int
    skip_overlong_prompts: bool
    n: int
    temperature: float
    top_p: float
    top_k: int
    max_response_length: int
    seed: int
    blank_images: bool = False
    """Every image replaced by a blank one of the same size (the blank-image control)."""


# ----------------------------------------------------------------------------------------------
# Engine construction (shared with verl.eval.score)
# ----------------------------------------------------------------------------------------------


def add_engine_arguments(parser: argparse.ArgumentParser, default_engine: str) -> None:
    """Engine choice and the engine constructor options an evaluation needs."""
    group = parser.add_argument_group("rollout engine")
    group.add_argument("--engine", choices=ENGINE_NAMES, default=default_engine, help="rollout engine")
    group.add_argument(
        "--dtype",
        choices=("float32", "bfloat16", "float16"),
        default=None,
        help="weights dtype (default: the engine's own, hf float32, vllm bfloat16)",
    )
    group.add_argument("--tensor_parallel_size", type=int, default=1, help="vllm: GPUs per engine")
    group.add_argument("--gpu_memory_utilization", type=float, default=0.7, help="vllm: GPU memory fraction")
    group.add_argument(
        "--max_model_len", type=int, default=None, help="vllm: context length (default: prompt + response budget)"
    )
    group.add_argument("--max_num_seqs", type=int, default=256, help="vllm: sequences decoded concurrently")
    group.add_argument("--enforce_eager", action="store_true", help="vllm: no CUDA graphs")
    group.add_argument(
        "--hf_max_batch_size", type=int, default=64, help="hf: sequences per transformers generate() call"
    )


def build_engine(
    args: argparse.Namespace,
    model_path: str,
    min_pixels: int,
    max_pixels: int,
    context_length: int,
    max_images_per_prompt: int,
) -> RolloutEngine:
    """The engine ``args.engine`` on ``model_path``; ``context_length`` = prompt + response budget."""
    kwargs: dict[str, Any] = {"min_pixels": min_pixels, "max_pixels": max_pixels}
    if args.dtype is not None:
        kwargs["dtype"] = args.dtype
    if args.engine == "hf":
        kwargs["max_batch_size"] = args.hf_max_batch_size
    else:
        max_model_len = args.max_model_len or context_length
        kwargs.update(
            max_model_len=max_model_len,
            max_num_batched_tokens=max(8192, max_model_len),
            gpu_memory_utilization=args.gpu_memory_utilization,
            tensor_parallel_size=args.tensor_parallel_size,
            enforce_eager=args.enforce_eager,
            max_num_seqs=args.max_num_seqs,
            max_images_per_prompt=max(1, max_images_per_prompt),
            # Evaluation never trains: keep weights and KV cache resident.
            free_cache_engine=False,
        )
    return make_rollout_engine(args.engine, model_path, **kwargs)


# ----------------------------------------------------------------------------------------------
# Output file: resume and repair
# ----------------------------------------------------------------------------------------------


def completed_indices(output_path: str, n: int) -> set[int]:
    """Dataset indices whose ``n`` responses are all in ``output_path`` (empty if it does not exist).

    A crash can leave a torn last line or a batch written only in part; such a tail is removed
    (atomic rewrite, logged) so that those prompts are generated again. Damage anywhere else, or
    more than ``n`` records for one index, raises: the file was not written by an interrupted run.
    """
    if not os.path.exists(output_path):
        return set()
    with open(output_path, encoding="utf-8") as file:
        text = file.read()
    lines = text.split("\n")
    # Records are newline-terminated: text after the last newline is a write cut short.
    torn_tail = lines.pop() != ""
    records: list[tuple[int, str]] = []
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
            index = int(record["dataset_index"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
            raise ValueError(
                f"{output_path} line {number}: not a response record ({type(error).__name__}: {error}); "
                "this file was not written by verl.eval.generate, or was edited; use --overwrite"
            ) from error
        records.append((index, line))
    counts: dict[int, int] = {}
    for index, _ in records:
        counts[index] = counts.get(index, 0) + 1
    over = sorted(index for index, count in counts.items() if count > n)
    if over:
        raise ValueError(
            f"{output_path}: dataset_index {over[:5]} has more than n={n} records; "
            "the file mixes runs, use --overwrite or another --output"
        )
    partial = {index for index, count in counts.items() if count < n}
    if torn_tail or partial:
        kept = [line for index, line in records if index not in partial]
        logger.warning(
            "%s: removing an incomplete tail left by an interrupted run (%s%d partial prompt(s)); "
            "those prompts are generated again",
            output_path,
            "a torn last line, " if torn_tail else "",
            len(partial),
        )
        write_atomically(output_path, "".join(line + "\n" for line in kept))
    return {index for index, count in counts.items() if count == n}


def write_atomically(path: str, text: str) -> None:
    """Replaces ``path`` by ``text`` via a temp file in the same directory and a rename."""
    directory = os.path.dirname(os.path.abspath(path))
    handle, temp_path = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp_path, path)
    except BaseException:
        os.unlink(temp_path)
        raise


def check_or_store_settings(output_path: str, settings: GenerationSettings, overwrite: bool) -> None:
    """Stores the settings next to the output; refuses to resume an output made with other settings."""
    settings_path = sidecar_path(output_path, ".generation.json")
    wanted = asdict(settings)
    if overwrite:
        for path in (output_path, settings_path):
            if os.path.exists(path):
                os.remove(path)
    if os.path.exists(output_path):
        if not os.path.exists(settings_path):
            raise ValueError(
                f"{output_path} exists but {settings_path} (its generation settings) does not; "
                "cannot tell whether resuming is safe: use --overwrite or another --output"
            )
        with open(settings_path, encoding="utf-8") as file:
            stored = json.load(file)
        # Settings added after a file was written read as their defaults (e.g. blank_images=False).
        defaults = {f.name: f.default for f in fields(GenerationSettings) if f.default is not MISSING}
        differing = {
            key: (stored.get(key, defaults.get(key)), value)
            for key, value in wanted.items()
            if stored.get(key, defaults.get(key)) != value
        }
        if differing:
            details = ", ".join(f"{key}: stored {old!r}, now {new!r}" for key, (old, new) in differing.items())
            raise ValueError(
                f"{output_path} was generated with other settings ({details}); "
                "use --overwrite or another --output"
            )
        return
    os.makedirs(os.path.dirname(os.path.abspath(output_path)), exist_ok=True)
    write_atomically(settings_path, json.dumps(wanted, indent=1) + "\n")


# ----------------------------------------------------------------------------------------------
# Generation
# ----------------------------------------------------------------------------------------------


def carried_columns(dataset: RLDataset) -> list[str]:
    """Extra data columns copied into each record: those holding JSON values (scalars, lists).

    Image, audio, binary and date columns are left out with a warning naming them.
    """
    carried, left_out = [], []
    for column in dataset.extra_keys:
        if column in RECORD_KEYS:
            left_out.append(f"{column} (clashes with a record key)")
        elif is_json_feature(dataset.rows.features[column]):
            carried.append(column)
        else:
            left_out.append(f"{column} ({type(dataset.rows.features[column]).__name__})")
    if left_out:
        logger.warning("%s: columns not copied into the records: %s", dataset.source, ", ".join(left_out))
    return carried


def is_json_feature(feature: Any) -> bool:
    """Whether a ``datasets`` feature holds values ``json.dumps`` writes as they are."""
    if isinstance(feature, datasets.ClassLabel):
        return True
    if isinstance(feature, datasets.Value):
        return feature.dtype in _JSON_VALUE_DTYPES
    if isinstance(feature, (datasets.List, datasets.LargeList)):
        return is_json_feature(feature.feature)
    if isinstance(feature, dict):
        return all(is_json_feature(value) for value in feature.values())
    return False


def max_images_per_prompt(dataset: RLDataset) -> int:
    """Most images any prompt holds (``RLDataset`` checks placeholders == images per row)."""
    return max((question.count(IMAGE_PLACEHOLDER) for question in dataset.rows[dataset.prompt_key]), default=0)


# What a record needs from an RLDataset item (plus the carried columns).
_ITEM_FIELDS = ("raw_prompt_ids", "images", "ground_truth", "problem", "index")


def slim_item(item: dict[str, Any], columns: list[str]) -> dict[str, Any]:
    """The item without its trainer-side tensors: ``multi_modal_inputs`` holds the image
    processor's pixel patches (up to ~100 MB per 4-megapixel image), so a batch of full items
    would hold gigabytes that the engine never reads."""
    return {key: item[key] for key in _ITEM_FIELDS + tuple(columns)}


@dataclass(frozen=True)
class GenerationReport:
    """What one ``generate_to_file`` call did."""

    prompts_total: int
    prompts_skipped: int
    """Already complete in the output file (resume)."""
    prompts_generated: int
    responses_written: int
    engine_calls: int


def generate_to_file(
    engine: RolloutEngine,
    dataset: RLDataset,
    tokenizer: PreTrainedTokenizerBase,
    output_path: str,
    sampling: SamplingConfig,
    batch_size: int,
    limit: int | None = None,
    show_progress: bool = True,
    blank_images: bool = False,
) -> GenerationReport:
    """Appends ``sampling.n`` records per prompt of ``dataset`` to ``output_path``.

    Prompts already complete in the file are skipped; the rest go to the engine ``batch_size``
    prompts per ``generate`` call, in dataset order. ``limit``: only the first ``limit`` prompts.
    ``blank_images``: each image is replaced by ``blank_like(image)`` (same size, so the same
    vision tokens) before the engine sees it.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    done = completed_indices(output_path, sampling.n)
    positions = range(len(dataset) if limit is None else min(limit, len(dataset)))
    todo = [position for position in positions if int(dataset.row_indices[position]) not in done]
    columns = carried_columns(dataset)
    responses_written = 0
    engine_calls = 0
    with open(output_path, "a", encoding="utf-8") as file, tqdm(
        total=len(todo), unit="prompt", desc=os.path.basename(output_path), disable=not show_progress
    ) as progress:
        for start in range(0, len(todo), batch_size):
            batch_positions = todo[start : start + batch_size]
            items = [slim_item(dataset[position], columns) for position in batch_positions]
            requests = [
                GenerationRequest(
                    prompt_ids=item["raw_prompt_ids"],
                    images=[blank_like(image) for image in item["images"]] if blank_images else item["images"],
                )
                for item in items
            ]
            # Each prompt's seed depends only on its dataset position: resuming or changing the
            # batch size does not change which random stream a prompt gets (vLLM adds i * n).
            batch_sampling = SamplingConfig(
                n=sampling.n,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                top_k=sampling.top_k,
                max_tokens=sampling.max_tokens,
                seed=None if sampling.seed is None else sampling.seed + batch_positions[0] * sampling.n,
            )
            outputs = engine.generate(requests, batch_sampling)
            engine_calls += 1
            if len(outputs) != len(items) or any(len(samples) != sampling.n for samples in outputs):
                raise RuntimeError(
                    f"engine returned {[len(samples) for samples in outputs]} samples for {len(items)} "
                    f"prompts, expected {sampling.n} each"
                )
            lines = []
            for item, samples in zip(items, outputs):
                prompt_text = tokenizer.decode(item["raw_prompt_ids"], skip_special_tokens=True)
                for sample_index, sample in enumerate(samples):
                    record = {
                        "dataset_index": int(item["index"]),
                        "sample_index": sample_index,
                        "prompt": prompt_text,
                        "response": tokenizer.decode(sample.token_ids, skip_special_tokens=True),
                        "ground_truth": item["ground_truth"],
                        "problem": item["problem"],
                        "response_length": len(sample.token_ids),
                        "finished": sample.finished,
                    }
                    record.update({column: item[column] for column in columns})
                    lines.append(json.dumps(record, ensure_ascii=False) + "\n")
            file.write("".join(lines))
            file.flush()
            os.fsync(file.fileno())
            responses_written += len(lines)
            progress.update(len(items))
    return GenerationReport(
        prompts_total=len(positions),
        prompts_skipped=len(positions) - len(todo),
        prompts_generated=len(todo),
        responses_written=responses_written,
        engine_calls=engine_calls,
    )


def build_dataset(
    settings: GenerationSettings, tokenizer: PreTrainedTokenizerBase, processor: Any, skip_bad_rows: bool = False
) -> RLDataset:
    """The prompts, built exactly as the trainer's validation set (with `skip_bad_rows`, rows
    that fail their checks are left out and listed in the dataset's `bad_rows`)."""
    return RLDataset(
        settings.data,
        tokenizer,
        processor,
        max_prompt_length=settings.max_prompt_length,
        min_pixels=settings.min_pixels,
        max_pixels=settings.max_pixels,
        prompt_key=settings.prompt_key,
        answer_key=settings.answer_key,
        image_key=settings.image_key,
        format_prompt=settings.format_prompt,
        filter_overlong_prompts=settings.skip_overlong_prompts,
        system_prompt=settings.system_prompt,
        skip_bad_rows=skip_bad_rows,
    )


def record_skipped_rows(output_path: str, dataset: RLDataset) -> str:
    """Writes OUT.skipped.json, {"skipped_rows": [{"dataset_index", "error"}]} (an empty list when
    none were skipped), which verl.eval.score copies into the summary; returns its path."""
    path = sidecar_path(output_path, ".skipped.json")
    rows = [{"dataset_index": index, "error": error} for index, error in sorted(dataset.bad_rows.items())]
    write_atomically(path, json.dumps({"source": dataset.source, "skipped_rows": rows}, indent=1) + "\n")
    return path


def add_prompt_arguments(
    parser: argparse.ArgumentParser, format_prompt: str, max_prompt_length: int, max_response_length: int
) -> None:
    """The data, prompt and run flags `verl.eval.generate` and `verl.eval.suite` share (read by
    `settings_from_args`), with each command's own defaults."""
    parser.add_argument(
        "--format_prompt",
        default=format_prompt,
        help="jinja file rendered with content=<question>; 'none' keeps the bare question (default: %(default)s)",
    )
    parser.add_argument("--prompt_key", default="problem", help="question column (with <image> placeholders)")
    parser.add_argument("--answer_key", default="answer", help="ground-truth column")
    parser.add_argument("--image_key", default="images", help="image-list column; 'none' for text-only data")
    parser.add_argument("--min_pixels", type=int, default=DEFAULT_MIN_PIXELS, help="smallest image area after resize")
    parser.add_argument("--max_pixels", type=int, default=DEFAULT_MAX_PIXELS, help="largest image area after resize")
    parser.add_argument(
        "--max_prompt_length", type=int, default=max_prompt_length, help="prompt tokens, image tokens expanded"
    )
    parser.add_argument(
        "--max_response_length", type=int, default=max_response_length, help="tokens per response (default: %(default)s)"
    )
    parser.add_argument(
        "--skip_overlong_prompts",
        action="store_true",
        help="drop prompts over max_prompt_length (logged) instead of stopping; changes the denominator",
    )
    parser.add_argument(
        "--skip_bad_rows",
        action="store_true",
        help="leave out rows that fail their checks (e.g. an undecodable image) instead of stopping; they are "
        "listed in a .skipped.json beside the responses and in the score summary (skipped_rows)",
    )
    parser.add_argument("--batch_size", type=int, default=256, help="prompts per engine generate() call")
    parser.add_argument("--limit", type=int, default=None, help="only the first LIMIT prompts (smoke runs)")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python3 -m verl.eval.generate",
        description="Generate responses for a benchmark (one JSON line per response), resumable.",
    )
    parser.add_argument("--model_path", required=True, help="HF checkpoint folder (merged actor)")
    parser.add_argument("--data", required=True, help="parquet/json/jsonl file, datasets dir, or name@split")
    parser.add_argument("--output", required=True, help="OUT.jsonl; OUT.generation.json holds the settings")
    parser.add_argument("--system_prompt", default=None, help="system message (default: the chat template's)")
    # The GPU recipe's data.max_response_length (tests/eval/test_caps.py checks).
    add_prompt_arguments(parser, DEFAULT_FORMAT_PROMPT, max_prompt_length=8192, max_response_length=DEFAULT_MAX_RESPONSE_LENGTH)
    parser.add_argument("--n", type=int, default=1, help="responses per prompt")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    parser.add_argument("--top_p", type=float, default=1.0)
    parser.add_argument("--top_k", type=int, default=-1, help="-1 = off")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (unused when greedy)")
    parser.add_argument("--overwrite", action="store_true", help="discard an existing OUT instead of resuming")
    parser.add_argument(
        "--blank_images",
        action="store_true",
        help="the blank-image control: replace every image by a blank one of the same size "
        "(score with verl.eval.score --blank_input OUT.jsonl)",
    )
    add_engine_arguments(parser, default_engine="vllm")
    args = parser.parse_args(argv)
    if args.n < 1:
        parser.error(f"--n must be >= 1, got {args.n}")
    if args.max_response_length < 1:
        parser.error(f"--max_response_length must be >= 1, got {args.max_response_length}")
    if not math.isfinite(args.temperature) or args.temperature < 0:
        parser.error(f"--temperature must be a finite number >= 0, got {args.temperature}")
    return args


def normalized_source(source: str) -> str:
    """Absolute path for a local file or folder (also ``DIR@split``); hub names unchanged.

    Resuming from another working directory must not look like a change of settings.
    """
    if os.path.exists(source):
        return os.path.abspath(source)
    if "@" in source:
        name, split = source.rsplit("@", 1)
        if os.path.isdir(name):
            return f"{os.path.abspath(name)}@{split}"
    return source


GREEDY_ONCE: dict[str, Any] = {"n": 1, "temperature": 0.0, "top_p": 1.0, "top_k": -1, "seed": None}
"""One greedy response per prompt (the suite's sampling; greedy decoding needs no seed)."""


def settings_from_args(
    args: argparse.Namespace, data: str, blank_images: bool, system_prompt: str | None, **sampling: Any
) -> GenerationSettings:
    """The settings of one generation run: the shared flags of `add_prompt_arguments` in `args`,
    this data source, blank-image control and system prompt, and the sampling (n, temperature,
    top_p, top_k, seed). Raises FileNotFoundError for a format prompt that does not exist."""
    format_prompt = None if args.format_prompt.lower() == "none" else os.path.abspath(args.format_prompt)
    if format_prompt is not None and not os.path.isfile(format_prompt):
        raise FileNotFoundError(f"--format_prompt {args.format_prompt}: file not found")
    return GenerationSettings(
        model_path=normalized_source(args.model_path),
        data=normalized_source(data),
        format_prompt=format_prompt,
        system_prompt=system_prompt,
        prompt_key=args.prompt_key,
        answer_key=args.answer_key,
        image_key=None if args.image_key.lower() == "none" else args.image_key,
        min_pixels=args.min_pixels,
        max_pixels=args.max_pixels,
        max_prompt_length=args.max_prompt_length,
        skip_overlong_prompts=args.skip_overlong_prompts,
        max_response_length=args.max_response_length,
        blank_images=blank_images,
        **sampling,
    )


def main(argv: list[str] | None = None) -> GenerationReport:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    check_model_path(args.model_path, "--model_path")
    settings = settings_from_args(
        args, args.data, args.blank_images, args.system_prompt,
        n=args.n, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, seed=args.seed,
    )
    tokenizer = AutoTokenizer.from_pretrained(settings.model_path)
    processor = AutoProcessor.from_pretrained(settings.model_path) if settings.image_key is not None else None
    dataset = build_dataset(settings, tokenizer, processor, args.skip_bad_rows)
    check_or_store_settings(args.output, settings, args.overwrite)
    skipped_path = record_skipped_rows(args.output, dataset) if args.skip_bad_rows else None
    engine = build_engine(
        args,
        settings.model_path,
        settings.min_pixels,
        settings.max_pixels,
        context_length=settings.max_prompt_length + settings.max_response_length,
        max_images_per_prompt=max_images_per_prompt(dataset),
    )
    sampling = SamplingConfig(
        n=settings.n,
        temperature=settings.temperature,
        top_p=settings.top_p,
        top_k=settings.top_k,
        max_tokens=settings.max_response_length,
        seed=settings.seed,
    )
    report = generate_to_file(
        engine, dataset, tokenizer, args.output, sampling, args.batch_size, args.limit, not args.no_progress,
        settings.blank_images,
    )
    dropped = len(dataset.rows) - len(dataset) - len(dataset.bad_rows)
    bad = f", {len(dataset.bad_rows)} skipped as bad rows (listed in {skipped_path})" if skipped_path else ""
    print(
        f"{args.output}: {report.responses_written} responses written for {report.prompts_generated} prompts "
        f"({report.prompts_skipped} already done, {dropped} dropped as over-long{bad}) in {report.engine_calls} "
        "engine call(s)"
    )
    return report


if __name__ == "__main__":
    # A missing model, an unreadable file or row, ...: one message on stderr, its traceback in the
    # temporary folder's error.log.
    with exit_cleanly(tempfile.gettempdir()):
        main()
