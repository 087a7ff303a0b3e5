"""The paper's evaluation in one command: generate and score every benchmark, then one aggregate table.

    python3 -m verl.eval.suite --model_path DIR [--benchmarks NAME ...] [--out_dir DIR]
        [--data_dir DIR] [--data NAME=SOURCE ...] [--engine vllm|hf] [--limit N] ...

(``bash validation_examples/2-seethink_format_eval.sh MODEL [BENCHMARKS...]`` runs it with the
reference's settings.) One engine serves every benchmark: responses, the blank-image control
and the perception re-answers. For each benchmark NAME (the reference's file names, below):

    OUT_DIR/responses/NAME.jsonl        responses (the reference's record: prompt, response,
                                        ground_truth, ...); re-running resumes where it stopped
    OUT_DIR/blank_image/NAME.jsonl      the same prompts with every image blanked (same size)
    OUT_DIR/scored/NAME.jsonl           each record with "score" (rule-based accuracy, the
                                        reference's field) and every metric; NAME.summary.json
    OUT_DIR/aggregate.json, aggregate.txt   the table below

``OUT_DIR/responses`` is laid out as the reference's ``evaluation/responses/<model>/`` folder, so
its ``llm_judge.py --response_dir`` and ``print_accuracy.py`` read it unchanged.

The table: per benchmark n, accuracy, format rate, perception sufficiency, language-shortcut
rate, blank-image accuracy and vision reliance (the answer changes without the image), judged
accuracy when an answer judge runs; then ``MMMU-Pro`` (the n-weighted accuracy of its standard
and vision settings, as the reference's ``weighted_mmmu_pro``) and the average over benchmarks
counting MMMU-Pro once (the reference's average).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from transformers import AutoProcessor, AutoTokenizer

from verl.eval.generate import (
    GREEDY_ONCE,
    GenerationSettings,
    add_engine_arguments,
    add_prompt_arguments,
    build_dataset,
    build_engine,
    check_or_store_settings,
    generate_to_file,
    max_images_per_prompt,
    record_skipped_rows,
    settings_from_args,
    write_atomically,
)
from verl.eval.judges import EngineJudge
from verl.eval.score import (
    Reanswers,
    load_reward,
    make_openai_judge,
    read_records,
    reanswer_with_engine,
    score_file,
)
from verl.rewards.grading import GRADERS
from verl.stages.perception_judge import DEFAULT_MAX_ERROR_RATE as DEFAULT_JUDGE_MAX_ERROR_RATE
from verl.utils.model_source import ModelPathError, check_model_path, hub_offline
from verl.workers.rollout import SamplingConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Benchmark:
    name: str
    """The reference's file name (``zli12321/<name>`` on the hub; ``responses/<name>.jsonl``)."""
    title: str
    """As the paper's table names it."""
    llm_judged: bool
    """The reference scored it with an LLM judge (open-ended or math answers); rule-based accuracy is a lower bound."""

    @property
    def hub_source(self) -> str:
        return f"zli12321/{self.name}@test"


# The paper's benchmarks, in its table's order; hub copies as the reference's eval scripts load them.
BENCHMARKS = (
    Benchmark("MMMU", "MMMU", False),
    Benchmark("mmmu_pro_10options", "MMMU-Pro standard (10 options)", False),
    Benchmark("mmmu-pro-vision", "MMMU-Pro vision", False),
    Benchmark("mm-vet", "MM-Vet", True),
    Benchmark("realWorldQA", "RealWorldQA", True),
    Benchmark("visnumbench", "VisNumBench", False),
    Benchmark("mathverse", "MathVerse", True),
    Benchmark("mathvision", "MATH-Vision", True),
    Benchmark("hallusionbench", "HallusionBench", False),
    Benchmark("mathvista", "MathVista", True),
    Benchmark("mmstar", "MMStar", False),
)
MMMU_PRO = ("mmmu_pro_10options", "mmmu-pro-vision")
_BY_KEY = {benchmark.name.lower().replace("-", "_"): benchmark for benchmark in BENCHMARKS}
_ALIASES = {"mmmu_pro": MMMU_PRO, "mmmu_pro_standard": ("mmmu_pro_10options",), "math_vision": ("mathvision",)}
LOCAL_SUFFIXES = (".parquet", ".jsonl", ".json")

# (summary key, column title, is a rate) of the aggregate table.
AGGREGATE_COLUMNS = (
    ("accuracy", "accuracy", True),
    ("judged_accuracy", "judged", True),
    ("format", "format", True),
    ("perception_sufficient", "perception", True),
    ("language_shortcut", "shortcut", True),
    ("accuracy_blank_image", "blank_acc", True),
    ("vision_reliance", "reliance", True),
    ("answer_judge_error", "judge_err", True),
)


# Row entries that are counts, not rates: never averaged.
_COUNTS = frozenset({"n", "n_skipped_rows"})


class SuiteError(ValueError):
    """A user error of the suite (unknown benchmark, missing data); the message says what to do."""


def select_benchmarks(names: list[str] | None) -> list[Benchmark]:
    """The benchmarks named (any case, ``-`` or ``_``; ``mmmu_pro`` = both settings); all when none."""
    if not names:
        return list(BENCHMARKS)
    chosen: list[Benchmark] = []
    for name in names:
        key = name.lower().replace("-", "_")
        keys = _ALIASES.get(key, (key,))
        for one in keys:
            benchmark = _BY_KEY.get(one.lower().replace("-", "_"))
            if benchmark is None:
                raise SuiteError(
                    f"unknown benchmark {name!r}: choose from {', '.join(b.name for b in BENCHMARKS)} (or mmmu_pro)"
                )
            if benchmark not in chosen:
                chosen.append(benchmark)
    return chosen


def data_source(benchmark: Benchmark, data_dir: str | None, overrides: dict[str, str]) -> str:
    """Where a benchmark's rows come from: ``--data NAME=SOURCE``, a local copy in ``data_dir``
    (``NAME.parquet|jsonl|json``, or ``NAME/`` read as ``NAME@test``), else the hub copy."""
    if benchmark.name in overrides:
        return overrides[benchmark.name]
    if data_dir:
        for suffix in LOCAL_SUFFIXES:
            path = os.path.join(data_dir, benchmark.name + suffix)
            if os.path.isfile(path):
                return path
        folder = os.path.join(data_dir, benchmark.name)
        if os.path.isdir(folder):
            return f"{folder}@test"
    return benchmark.hub_source


def parse_overrides(pairs: list[str]) -> dict[str, str]:
    overrides = {}
    for pair in pairs:
        name, sep, source = pair.partition("=")
        if not sep or not source:
            raise SuiteError(f"--data {pair!r}: expected NAME=SOURCE (a file, DIR@split or hub name@split)")
        overrides[select_benchmarks([name])[0].name] = source
    return overrides


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python3 -m verl.eval.suite",
        description="Generate and score every Vision-SR1 benchmark with one model; print and write one table.",
        epilog="benchmarks: " + ", ".join(f"{b.name} ({b.title})" for b in BENCHMARKS),
    )
    parser.add_argument("--model_path", required=True, help="HF model folder (or hub id when online)")
    parser.add_argument("--benchmarks", nargs="*", default=None, help="names (default: all); mmmu_pro = both settings")
    parser.add_argument("--out_dir", default=None, help="default outputs/eval/<basename of model_path>")
    parser.add_argument("--data_dir", default=None, help="local copies: NAME.parquet|jsonl|json or NAME/ (offline)")
    parser.add_argument("--data", nargs="*", default=[], metavar="NAME=SOURCE", help="one benchmark's source")
    add_prompt_arguments(
        parser, "configs/format_prompt/see_think.jinja", max_prompt_length=12800, max_response_length=4096
    )
    parser.add_argument("--no_self_reward", action="store_true", help="skip the perception re-answers")
    parser.add_argument("--no_blank_control", action="store_true", help="skip the blank-image control")
    parser.add_argument("--grader", choices=tuple(GRADERS), default=None, help="answer grader (default builtin)")
    judge = parser.add_argument_group("answer judge (re-checks answers the rule-based grader marks wrong)")
    judge.add_argument("--answer_judge_model_path", default=None, help="a local judge model folder, run by --engine")
    judge.add_argument("--answer_judge_max_tokens", type=int, default=256)
    judge.add_argument("--answer_judge_base_url", default=None, help="or an OpenAI-compatible server")
    judge.add_argument("--answer_judge_model", default=None)
    judge.add_argument("--answer_judge_api_key_env", default="OPENAI_API_KEY")
    judge.add_argument("--judge_timeout_s", type=float, default=60.0)
    judge.add_argument("--judge_max_retries", type=int, default=2)
    judge.add_argument("--judge_max_workers", type=int, default=16)
    judge.add_argument("--judge_max_error_rate", type=float, default=DEFAULT_JUDGE_MAX_ERROR_RATE)
    add_engine_arguments(parser, default_engine="vllm")
    args = parser.parse_args(argv)
    if args.answer_judge_model_path and args.answer_judge_base_url:
        parser.error("--answer_judge_model_path and --answer_judge_base_url are two judges; give one")
    if bool(args.answer_judge_base_url) != bool(args.answer_judge_model):
        parser.error("--answer_judge_base_url and --answer_judge_model go together")
    return args


def _settings(args: argparse.Namespace, source: str, blank: bool) -> GenerationSettings:
    """One benchmark's generation settings: the reference's greedy single answer, no system prompt."""
    try:
        return settings_from_args(args, source, blank, None, **GREEDY_ONCE)
    except FileNotFoundError as error:
        raise SuiteError(str(error)) from None


def _load_dataset(
    benchmark: Benchmark, settings: GenerationSettings, tokenizer, processor, data_dir: str | None, skip_bad_rows: bool
):
    try:
        return build_dataset(settings, tokenizer, processor, skip_bad_rows)
    except Exception as error:  # noqa: BLE001 - turned into one line naming the benchmark and the fix
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if settings.data == benchmark.hub_source:
            where = "the hub is unreachable (offline)" if hub_offline() else "loading it from the hub failed"
            raise SuiteError(
                f"benchmark {benchmark.name}: {where} ({first_line}); put a local copy at "
                f"{os.path.join(data_dir or 'DATA_DIR', benchmark.name)}.parquet|.jsonl|.json (pass --data_dir) "
                f"or pass --data {benchmark.name}=SOURCE"
            ) from error
        raise SuiteError(f"benchmark {benchmark.name}: cannot read {settings.data}: {first_line}") from error


def aggregate(summaries: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per-benchmark rows, the n-weighted MMMU-Pro row and the average (MMMU-Pro counted once)."""
    rows = {}
    for name, summary in summaries.items():
        overall = summary["overall"]
        rows[name] = {"n": int(overall["n"]), **{key: overall[key] for key, _, _ in AGGREGATE_COLUMNS if key in overall}}
        if "n_skipped_rows" in summary:
            rows[name]["n_skipped_rows"] = summary["n_skipped_rows"]
    result: dict[str, Any] = {"benchmarks": rows}
    pro = [rows[name] for name in MMMU_PRO if name in rows]
    averaged = {name: row for name, row in rows.items() if name not in MMMU_PRO}
    if pro:
        total = sum(row["n"] for row in pro)
        weighted = {"n": total}
        for key in set.intersection(*(set(row) for row in pro)) - _COUNTS:
            weighted[key] = sum(row["n"] * row[key] for row in pro) / total
        result["mmmu_pro_weighted"] = weighted
        averaged["MMMU-Pro"] = weighted
    if averaged:
        keys = set.intersection(*(set(row) for row in averaged.values())) - _COUNTS
        result["average"] = {
            "benchmarks": len(averaged),
            "n": sum(row["n"] for row in averaged.values()),
            **{key: float(np.mean([row[key] for row in averaged.values()])) for key in sorted(keys)},
        }
    return result


def format_aggregate(result: dict[str, Any]) -> str:
    rows = [(name, row) for name, row in result["benchmarks"].items()]
    if "mmmu_pro_weighted" in result:
        rows.append(("MMMU-Pro (weighted)", result["mmmu_pro_weighted"]))
    if "average" in result:
        rows.append((f"Average ({result['average']['benchmarks']})", result["average"]))
    present = [column for column in AGGREGATE_COLUMNS if any(column[0] in row for _, row in rows)]
    header = ["benchmark", "n"] + [title for _, title, _ in present]
    body = []
    for name, row in rows:
        cells = [name, str(int(row["n"]))]
        for key, _, _ in present:
            cells.append(f"{100 * row[key]:.1f}" if key in row else "-")
        body.append(cells)
    widths = [max(len(line[i]) for line in [header] + body) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(width) if i == 0 else cell.rjust(width) for i, (cell, width) in enumerate(zip(line, widths)))
        for line in [header] + body
    ]
    lines.insert(1, "-" * len(lines[0]))
    if len(lines) > 3 and "average" in result:
        lines.insert(len(lines) - 1, "-" * len(lines[0]))
    return "\n".join(lines) + "\n(rates in %; '-': not measured for that benchmark)"


def _answer_judge(args: argparse.Namespace):
    if args.answer_judge_base_url:
        return (
            make_openai_judge(args, args.answer_judge_base_url, args.answer_judge_model, args.answer_judge_api_key_env),
            f"openai:{args.answer_judge_model}@{args.answer_judge_base_url}",
        )
    if args.answer_judge_model_path:
        check_model_path(args.answer_judge_model_path, "--answer_judge_model_path")
        try:
            judge = EngineJudge.from_args(
                args, args.answer_judge_model_path, args.answer_judge_max_tokens, args.judge_max_error_rate
            )
        except ValueError as error:
            raise SuiteError(str(error)) from error
        return judge, f"local:{args.answer_judge_model_path}"
    return None


def run(args: argparse.Namespace) -> dict[str, Any]:
    check_model_path(args.model_path, "--model_path")
    benchmarks = select_benchmarks(args.benchmarks)
    overrides = parse_overrides(args.data)
    out_dir = args.out_dir or os.path.join("outputs", "eval", os.path.basename(os.path.normpath(args.model_path)))
    folders = {kind: os.path.join(out_dir, kind) for kind in ("responses", "blank_image", "scored")}
    for folder in folders.values():
        os.makedirs(folder, exist_ok=True)
    reward_fn = load_reward(None, "{}", args.grader, reanswering=not args.no_self_reward)
    tokenizer = AutoTokenizer.from_pretrained(args.model_path)
    processor = AutoProcessor.from_pretrained(args.model_path)

    plans = []
    for benchmark in benchmarks:
        settings = _settings(args, data_source(benchmark, args.data_dir, overrides), blank=False)
        dataset = _load_dataset(benchmark, settings, tokenizer, processor, args.data_dir, args.skip_bad_rows)
        plans.append((benchmark, settings, dataset))
    engine = build_engine(
        args, args.model_path, args.min_pixels, args.max_pixels,
        context_length=args.max_prompt_length + args.max_response_length,
        max_images_per_prompt=max(max_images_per_prompt(dataset) for _, _, dataset in plans),
    )
    sampling = SamplingConfig(n=1, temperature=0.0, max_tokens=args.max_response_length)

    # Phase 1, the policy's engine: responses, blank-image responses, perception re-answers.
    outputs: dict[str, tuple[str, str | None]] = {}
    reanswers: dict[str, tuple[Reanswers | None, str | None]] = {}
    for position, (benchmark, settings, dataset) in enumerate(plans, start=1):
        start = time.perf_counter()
        print(f">>> [{position}/{len(plans)}] {benchmark.name} ({benchmark.title}): {len(dataset)} prompts "
              f"from {settings.data}", flush=True)
        output = os.path.join(folders["responses"], f"{benchmark.name}.jsonl")
        check_or_store_settings(output, settings, overwrite=False)
        if args.skip_bad_rows:
            record_skipped_rows(output, dataset)
        generate_to_file(engine, dataset, tokenizer, output, sampling, args.batch_size, args.limit,
                         not args.no_progress)
        blank_output = None
        if not args.no_blank_control:
            blank_output = os.path.join(folders["blank_image"], f"{benchmark.name}.jsonl")
            check_or_store_settings(blank_output, replace(settings, blank_images=True), overwrite=False)
            generate_to_file(engine, dataset, tokenizer, blank_output, sampling, args.batch_size, args.limit,
                             not args.no_progress, blank_images=True)
        outputs[benchmark.name] = (output, blank_output)
        reanswers[benchmark.name] = (None, None)
        if not args.no_self_reward:
            records = read_records(output)
            reanswers[benchmark.name] = (
                reanswer_with_engine(engine, tokenizer, [r.response for r in records], [r.problem for r in records],
                                     "zero", args.max_prompt_length, args.max_response_length),
                f"model:{args.model_path}",
            )
        print(f"    generated in {time.perf_counter() - start:.0f} s", flush=True)
    # The judge may be another model on the same accelerator: the policy's engine goes first.
    del engine
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()

    # Phase 2: scores (and the answer judge, when one is given).
    answer_judge = _answer_judge(args)
    summaries: dict[str, dict[str, Any]] = {}
    for benchmark, _, _ in plans:
        output, blank_output = outputs[benchmark.name]
        cached = reanswers[benchmark.name]
        result = score_file(output, reward_fn, lambda records, cached=cached: cached, answer_judge, blank_output,
                            group_by=[])
        write_atomically(os.path.join(folders["scored"], f"{benchmark.name}.jsonl"), "".join(result.scored_lines))
        write_atomically(os.path.join(folders["scored"], f"{benchmark.name}.summary.json"),
                         json.dumps(result.summary, indent=1) + "\n")
        summaries[benchmark.name] = result.summary

    table = aggregate(summaries)
    table.update(
        model_path=os.path.abspath(args.model_path) if os.path.isdir(args.model_path) else args.model_path,
        grader=reward_fn.kwargs.get("grader", "builtin"),
        answer_judge=answer_judge[1] if answer_judge is not None else None,
        llm_judged_without_judge=[b.name for b in benchmarks if b.llm_judged and answer_judge is None],
    )
    text = format_aggregate(table)
    skipped = {name: row["n_skipped_rows"] for name, row in table["benchmarks"].items() if row.get("n_skipped_rows")}
    if skipped:
        text += "\nrows left out (--skip_bad_rows; responses/NAME.skipped.json): " + ", ".join(
            f"{name} {count}" for name, count in skipped.items()
        )
    if table["llm_judged_without_judge"]:
        text += (f"\n{', '.join(table['llm_judged_without_judge'])}: the reference judged these with an LLM; "
                 "rule-based accuracy here (add --answer_judge_model_path DIR or --answer_judge_base_url URL)")
    write_atomically(os.path.join(out_dir, "aggregate.json"), json.dumps(table, indent=1) + "\n")
    write_atomically(os.path.join(out_dir, "aggregate.txt"), text + "\n")
    print(text)
    print(f"written: {os.path.join(out_dir, 'aggregate.json')}, {os.path.join(out_dir, 'aggregate.txt')}")
    return table


def main(argv: list[str] | None = None) -> dict[str, Any]:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return run(parse_args(argv))


if __name__ == "__main__":
    try:
        main()
    except (SuiteError, ModelPathError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
