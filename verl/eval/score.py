"""Score generated responses: accuracy, format, perception sufficiency, language-shortcut rate.

    python3 -m verl.eval.score --input OUT.jsonl [--reward sr1|see_think|r1v|cot|file.py:fn]
        [--self_reward_model DIR --engine hf|vllm]                    # perception re-answers
        [--judge openai --judge_base_url URL --judge_model M]         # ... or by an API model
        [--answer_judge_base_url URL --answer_judge_model M]          # LLM check of wrong answers

Reads the records of ``verl.eval.generate`` and writes ``OUT.summary.json`` (metrics overall and
per group) and ``OUT.scored.jsonl`` (each record with its scores, perception and re-answer).

Perception (the Vision-SR1 self-reward, as a measurement): each response's ``<description>`` is
re-asked, text only, with the question (``verl.stages.self_reward.build_reprompt``), greedily,
either by a model through a rollout engine (all re-prompts in ONE ``generate`` call) or by an
OpenAI-compatible server. ``perception_sufficient``: the re-answer reaches the ground truth;
``language_shortcut``: the answer is correct while the perception is not sufficient (the paper's
Language Shortcut Rate is its mean). A response without a description is not re-asked and counts
as insufficient. Judge failures (after bounded retries) count as wrong and are reported.

Several samples per prompt (``generate --n N``, temperature > 0): accuracy is their mean, and the
summary adds ``accuracy_best_of_n`` (pass@N) and ``accuracy_group_spread`` (prompts whose samples
disagree: the ones a GRPO group learns from).

Blank-image control (``--blank_input OUT.blank.jsonl``, written by ``verl.eval.generate
--blank_images``): each response is paired with the response to the same prompt (same
``dataset_index`` and ``sample_index``) whose images were blank; ``accuracy_blank_image``,
``vision_reliance`` (the final answer changes) and ``accuracy_drop`` are added to every record and
summarised overall and per group (``verl.rewards.vision_control``).

Answer judge (the reference's protocol for open-ended benchmarks such as MM-Vet): responses the
rule-based grader marks wrong are shown to an LLM with the question and the reference answer;
``judged_accuracy`` counts those it calls correct. A reply without a clear verdict is an error,
counted as wrong (the reference counted errors as correct).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from verl.algorithms.dapo import prompt_has_spread
from verl.eval.generate import (
    DEFAULT_MAX_PIXELS,
    DEFAULT_MIN_PIXELS,
    RECORD_KEYS,
    write_atomically,
    add_engine_arguments,
    build_engine,
    sidecar_path,
)
from verl.eval.judges import EngineJudge, LazyJudge
from verl.protocol import DataProto
from verl.rewards import RewardInput
from verl.rewards.grader import extract_boxed
from verl.rewards.grading import DEFAULT_GRADER, GRADERS
from verl.rewards.loader import BUILTIN_REWARD_FUNCTIONS, LoadedRewardFunction, RewardFunctionError, load_reward_function
from verl.rewards.loader import DEFAULT_TIMEOUT_S as DEFAULT_REWARD_TIMEOUT_S
from verl.rewards.vision_control import blank_image_control
from verl.stages.clipping import PASS2_CLIP_RATIO, RESPONSE_CLIP_RATIO, clip_ratio, warn_on_clipping
from verl.stages.config import SelfRewardConfig
from verl.stages.perception_judge import DEFAULT_MAX_ERROR_RATE as DEFAULT_JUDGE_MAX_ERROR_RATE
from verl.stages.perception_judge import JudgeFailedError, JudgeTimeoutError, OpenAIJudge
from verl.stages.self_reward import ReanswerJudge, SelfRewardStage, build_reprompt, perception_of
from verl.utils.model_source import ModelPathError, check_model_path
from verl.workers.rollout import RolloutEngine, SamplingConfig
from verl.workers.rollout.batching import build_rollout_batch, requests_from_batch

logger = logging.getLogger(__name__)

REQUIRED_KEYS = ("dataset_index", "response", "ground_truth", "problem")
# Record keys that are never grouping columns (free text, ids, per-response numbers).
_NON_GROUP_KEYS = set(RECORD_KEYS)
# Metrics shown in the printed table, in order: (summary key, column title, is a rate).
TABLE_COLUMNS = (
    ("accuracy", "accuracy", True),
    ("accuracy_best_of_n", "best_of_n", True),
    ("judged_accuracy", "judged_acc", True),
    ("format", "format", True),
    ("perception_sufficient", "perception", True),
    ("language_shortcut", "shortcut", True),
    ("accuracy_blank_image", "blank_acc", True),
    ("vision_reliance", "reliance", True),
    ("response_length", "length", False),
    ("truncated", "clipped", True),
)
ANSWER_JUDGE_TEMPLATE = (
    "Decide whether a candidate answer to a question is correct, given the reference answer.\n"
    "Question: {question}\n"
    "Reference answer: {reference}\n"
    "Candidate answer: {candidate}\n"
    "Equivalent forms count as correct (0.5 and 1/2, B and (B), the option letter and its text). Reply "
    "with exactly <judgment>correct</judgment> or <judgment>incorrect</judgment>."
)
# Clip ratio -> the flag that raises its cap (the trainer's keys: verl.stages.clipping.TRAINER_CAP_KEYS).
EVAL_CAP_FLAGS = {
    RESPONSE_CLIP_RATIO: "verl.eval.generate --max_response_length",
    PASS2_CLIP_RATIO: "verl.eval.score --reanswer_max_response_length",
}
_JUDGMENT = re.compile(r"<judgment>\s*(correct|incorrect)\s*</judgment>", re.IGNORECASE)


# ----------------------------------------------------------------------------------------------
# Input
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResponseRecord:
    """One line of a generate.py output file."""

    line: int
    dataset_index: int
    response: str
    ground_truth: str
    problem: str
    response_length: int | None
    """Response tokens; None for files that do not carry it (e.g. the reference's)."""
    finished: bool | None
    """False when the response was cut at max_response_length; None when unknown."""
    raw: dict[str, Any]
    """The whole record, extra columns included."""


def read_records(path: str) -> list[ResponseRecord]:
    """Parses every line; a malformed line or field raises naming the file, line and key."""
    records = []
    with open(path, encoding="utf-8") as file:
        for number, line in enumerate(file, start=1):
            if not line.strip():
                continue
            where = f"{path} line {number}"
            try:
                raw = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{where}: not JSON ({error})") from error
            if not isinstance(raw, dict):
                raise ValueError(f"{where}: expected a JSON object, got {type(raw).__name__}")
            missing = [key for key in REQUIRED_KEYS if key not in raw]
            if missing:
                raise ValueError(
                    f"{where}: missing {missing} (records written by verl.eval.generate carry "
                    f"{list(REQUIRED_KEYS)})"
                )
            for key in ("response", "ground_truth", "problem"):
                if not isinstance(raw[key], str):
                    raise ValueError(f"{where}: {key!r} must be a string, got {type(raw[key]).__name__}")
            length = raw.get("response_length")
            if length is not None and (isinstance(length, bool) or not isinstance(length, int) or length < 0):
                raise ValueError(f"{where}: 'response_length' must be an int >= 0, got {length!r}")
            finished = raw.get("finished")
            if finished is not None and not isinstance(finished, bool):
                raise ValueError(f"{where}: 'finished' must be true/false, got {finished!r}")
            records.append(
                ResponseRecord(number, int(raw["dataset_index"]), raw["response"], raw["ground_truth"],
                               raw["problem"], length, finished, raw)
            )
    if not records:
        raise ValueError(f"{path}: no records")
    with_length = sum(record.response_length is not None for record in records)
    if 0 < with_length < len(records):
        first = next(record for record in records if record.response_length is None)
        raise ValueError(f"{path} line {first.line}: no 'response_length' while other records have one")
    return records


# ----------------------------------------------------------------------------------------------
# Perception re-answers
# ----------------------------------------------------------------------------------------------


@dataclass
class Reanswers:
    """Per record: the perception that was re-asked (None: none), its re-answers, judge failure,
    and how many of its re-answers were cut at the re-answer cap (None: a judge re-answered)."""

    descriptions: list[str | None]
    texts: list[list[str]]
    errors: list[bool]
    metrics: dict[str, float] = field(default_factory=dict)
    clipped: list[int] | None = None


def reanswer_with_engine(
    engine: RolloutEngine,
    tokenizer: PreTrainedTokenizerBase,
    responses: list[str],
    questions: list[str],
    missing_description: str,
    max_prompt_length: int,
    max_response_length: int,
) -> Reanswers:
    """Greedy text-only re-answers by the engine's model: one ``engine.generate`` call in all.

    ``questions``: the questions without ``<image>``. Over-long descriptions are shortened
    (``SelfRewardStage.reprompt_ids``; the rate is in ``metrics``).
    """
    config = SelfRewardConfig(
        enable=True,
        n=1,
        temperature=0.0,
        max_response_length=max_response_length,
        max_prompt_length=max_prompt_length,
        missing_description=missing_description,
    )

    def generate(prompts: DataProto, sampling: SamplingConfig, response_budget: int) -> DataProto:
        outputs = engine.generate(requests_from_batch(prompts), sampling)
        return build_rollout_batch(prompts, outputs, response_budget, tokenizer.pad_token_id)

    stage = SelfRewardStage(config, tokenizer, generate)
    result = stage.run(responses, questions, validation=True)
    return Reanswers(
        result.descriptions, result.reanswers, [False] * len(responses), result.metrics, result.reanswers_clipped
    )


def reanswer_with_judge(
    judge: ReanswerJudge, responses: list[str], questions: list[str], missing_description: str
) -> Reanswers:
    """Re-answers by an external judge, one request per perception; a failed one is an error."""
    descriptions = [perception_of(response, missing_description) for response in responses]
    asked = [index for index, description in enumerate(descriptions) if description is not None]
    answers = judge.reanswer([build_reprompt(descriptions[i], questions[i]) for i in asked], 1)
    texts: list[list[str]] = [[] for _ in responses]
    errors = [False] * len(responses)
    for index, answer in zip(asked, answers):
        if answer is None:
            errors[index] = True
            texts[index] = [""]  # one wrong re-answer: an error never counts as sufficient
        else:
            texts[index] = answer
    return Reanswers(descriptions, texts, errors)


# ----------------------------------------------------------------------------------------------
# Answer judge
# ----------------------------------------------------------------------------------------------


def answer_judge_prompt(question: str, reference: str, response: str) -> str:
    """The check of one answer; the candidate is the last ``\\boxed{}`` or, without one, the response."""
    candidate = extract_boxed(response)
    return ANSWER_JUDGE_TEMPLATE.format(
        question=question, reference=reference, candidate=candidate if candidate is not None else response
    )


def parse_judgment(reply: str) -> bool | None:
    """True / False from the last ``<judgment>correct|incorrect</judgment>``; None when there is none."""
    matches = _JUDGMENT.findall(reply)
    return matches[-1].lower() == "correct" if matches else None


def judge_answers(judge: ReanswerJudge, records: Sequence[ResponseRecord], indices: list[int]) -> dict[int, str]:
    """Verdict per judged record index: ``correct``, ``incorrect`` or ``error`` (no usable reply)."""
    prompts = [
        answer_judge_prompt(records[i].problem, records[i].ground_truth, records[i].response) for i in indices
    ]
    # OpenAIJudge.reanswer sends each prompt as one user message and returns the replies.
    replies = judge.reanswer(prompts, 1)
    verdicts = {}
    for index, reply in zip(indices, replies):
        verdict = parse_judgment(reply[0]) if reply is not None else None
        if reply is not None and verdict is None:
            logger.warning("answer judge reply without a verdict for line %d: %.200r", records[index].line, reply[0])
        verdicts[index] = "error" if verdict is None else ("correct" if verdict else "incorrect")
    return verdicts


# ----------------------------------------------------------------------------------------------
# Blank-image control
# ----------------------------------------------------------------------------------------------


def pair_blank_records(
    records: Sequence[ResponseRecord], blank_records: Sequence[ResponseRecord], blank_path: str
) -> list[ResponseRecord]:
    """For each record, the blank-image record of the same prompt and sample; a record without
    its twin (or a blank file of another dataset) raises naming both."""
    by_key = {(r.dataset_index, r.raw.get("sample_index", 0)): r for r in blank_records}
    paired = []
    for record in records:
        key = (record.dataset_index, record.raw.get("sample_index", 0))
        twin = by_key.get(key)
        if twin is None:
            raise ValueError(
                f"{blank_path}: no blank-image response for dataset_index {key[0]} sample_index {key[1]} "
                f"(line {record.line} of the input); generate it with the same --data, --n and --limit"
            )
        if twin.ground_truth != record.ground_truth:
            raise ValueError(
                f"{blank_path} line {twin.line}: ground truth {twin.ground_truth!r} differs from the input's "
                f"{record.ground_truth!r} for dataset_index {key[0]}: not the same dataset"
            )
        paired.append(twin)
    return paired


# ----------------------------------------------------------------------------------------------
# Scoring and summary
# ----------------------------------------------------------------------------------------------


def score_records(
    records: Sequence[ResponseRecord], reward_fn: LoadedRewardFunction, reanswers: Reanswers | None,
    source: str = "the records",
) -> list[dict[str, float]]:
    """The reward function's components per record (re-answers and perceptions passed in);
    `source` names the records in the reward function's errors."""
    inputs = [
        RewardInput(
            response=record.response,
            ground_truth=record.ground_truth,
            problem=record.problem,
            # Files without token counts: 0 (the built-in rewards do not read it).
            response_length=record.response_length if record.response_length is not None else 0,
            reanswers=reanswers.texts[i] if reanswers is not None else [],
            description=reanswers.descriptions[i] if reanswers is not None else None,
        )
        for i, record in enumerate(records)
    ]
    return reward_fn(inputs, batch=source)


def per_record_metrics(
    records: Sequence[ResponseRecord],
    scores: list[dict[str, float]],
    reanswers: Reanswers | None,
    verdicts: dict[int, str] | None,
    blank_records: Sequence[ResponseRecord] | None = None,
) -> list[dict[str, float]]:
    """Every averaged quantity of each record: reward components, length, truncation, errors,
    and the blank-image control when ``blank_records`` (paired one to one) are given."""
    control = (
        blank_image_control(
            [r.response for r in records],
            [r.response for r in blank_records],
            [r.ground_truth for r in records],
            [r.problem for r in records],
        )
        if blank_records is not None
        else None
    )
    rows = []
    for i, (record, score) in enumerate(zip(records, scores)):
        row = dict(score)
        if control is not None:
            row.update(control[i])
        if record.response_length is not None:
            row["response_length"] = float(record.response_length)
        if record.finished is not None:
            row["truncated"] = float(not record.finished)
        if reanswers is not None:
            row["reanswer_error"] = float(reanswers.errors[i])
        if verdicts is not None:
            row["judged_accuracy"] = float(score["accuracy"] == 1.0 or verdicts.get(i) == "correct")
            row["answer_judge_error"] = float(verdicts.get(i) == "error")
        rows.append(row)
    return rows


def summarize_subset(records: Sequence[ResponseRecord], rows: list[dict[str, float]]) -> dict[str, float]:
    """Mean of every per-record metric, plus ``n`` (responses) and ``n_prompts``; with several
    samples per prompt (``generate --n``), also the per-prompt view GRPO learns from
    (``sampled_accuracy``)."""
    summary: dict[str, float] = {"n": len(rows), "n_prompts": len({record.dataset_index for record in records})}
    for key in sorted(set().union(*(row.keys() for row in rows))):
        summary[key] = float(np.mean([row[key] for row in rows]))
    summary.update(sampled_accuracy(records, rows))
    return summary


def sampled_accuracy(records: Sequence[ResponseRecord], rows: list[dict[str, float]]) -> dict[str, float]:
    """Per-prompt accuracy over its samples, when some prompt has more than one:

    - ``accuracy_best_of_n``: mean over prompts of the best sample's accuracy (pass@n for a 0/1
      accuracy): what sharpening the policy could reach without new behaviour;
    - ``accuracy_group_spread``: share of prompts whose samples score differently, the prompts
      that give a GRPO group a non-zero advantage (``dapo.prompt_has_spread``, the test behind the
      trainer's ``train/group_spread/accuracy``).

    Empty when every prompt has one sample or the reward has no ``accuracy`` component.
    """
    by_prompt: dict[int, list[float]] = {}
    for record, row in zip(records, rows):
        if "accuracy" in row:
            by_prompt.setdefault(record.dataset_index, []).append(row["accuracy"])
    if not by_prompt or max(len(scores) for scores in by_prompt.values()) < 2:
        return {}
    return {
        "accuracy_best_of_n": float(np.mean([max(scores) for scores in by_prompt.values()])),
        "accuracy_group_spread": float(np.mean([
            prompt_has_spread(torch.tensor(scores), len(scores))[0] for scores in by_prompt.values()
        ])),
    }


def group_columns(records: Sequence[ResponseRecord], max_groups: int) -> list[str]:
    """Extra columns worth grouping by: str/bool/int values in every record, 2..max_groups distinct."""
    candidates = [key for key in records[0].raw if key not in _NON_GROUP_KEYS]
    columns = []
    for key in candidates:
        values = [record.raw.get(key) for record in records]
        if not all(isinstance(value, (str, bool, int)) for value in values):
            continue
        if 2 <= len(set(values)) <= max_groups:
            columns.append(key)
    return columns


def group_key(value: Any) -> str:
    """A group value as a summary key: JSON spelling for booleans (``true``), ``str`` otherwise."""
    return json.dumps(value) if isinstance(value, bool) else str(value)


def summarize(
    records: Sequence[ResponseRecord], rows: list[dict[str, float]], columns: list[str]
) -> dict[str, Any]:
    """``{"overall": metrics, "groups": {column: {value: metrics}}}``; values sorted, as strings.

    Every record must have every column of ``columns``.
    """
    groups: dict[str, dict[str, dict[str, float]]] = {}
    for column in columns:
        by_value: dict[str, list[int]] = {}
        for i, record in enumerate(records):
            by_value.setdefault(group_key(record.raw[column]), []).append(i)
        groups[column] = {
            value: summarize_subset([records[i] for i in members], [rows[i] for i in members])
            for value, members in sorted(by_value.items())
        }
    return {"overall": summarize_subset(records, rows), "groups": groups}


def format_table(summary: dict[str, Any]) -> str:
    """Plain-text table: one row overall and one per group value; rates in percent."""
    present = [column for column in TABLE_COLUMNS if column[0] in summary["overall"]]
    subsets = [("overall", summary["overall"])]
    for column, by_value in summary["groups"].items():
        subsets.extend((f"{column}={value}", metrics) for value, metrics in by_value.items())
    header = ["subset", "n"] + [title for _, title, _ in present]
    body = []
    for name, metrics in subsets:
        cells = [name, str(int(metrics["n"]))]
        for key, _, is_rate in present:
            value = metrics[key]
            cells.append(f"{100 * value:.1f}%" if is_rate else f"{value:.1f}")
        body.append(cells)
    widths = [max(len(row[i]) for row in [header] + body) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) if i == 0 else cell.rjust(width) for i, (cell, width) in
                       enumerate(zip(row, widths))) for row in [header] + body]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python3 -m verl.eval.score",
        description="Score verl.eval.generate responses; writes OUT.summary.json and OUT.scored.jsonl.",
    )
    parser.add_argument("--input", required=True, help="OUT.jsonl written by verl.eval.generate")
    parser.add_argument(
        "--reward",
        default=None,
        help="reward function giving accuracy/format: sr1, see_think, r1v, cot or file.py:fn "
        "(default: sr1 with a perception re-answerer, see_think without)",
    )
    parser.add_argument(
        "--reward_kwargs", default="{}", help="JSON object of keyword arguments for the reward function"
    )
    parser.add_argument(
        "--reward_timeout_s", type=float, default=DEFAULT_REWARD_TIMEOUT_S,
        help="longest one call of the reward function (all records) may take before it is an error "
        "(default %(default)g)",
    )
    parser.add_argument(
        "--grader",
        choices=tuple(GRADERS),
        default=None,
        help=f"answer grader of the built-in rewards (default {DEFAULT_GRADER}; mathruler = the reference's, "
        "for scores comparable with the paper's); same as --reward_kwargs '{\"grader\": ...}'",
    )
    parser.add_argument(
        "--group_by",
        nargs="*",
        default=None,
        help="columns to group by (default: every extra str/bool/int column with 2..--max_groups values)",
    )
    parser.add_argument("--max_groups", type=int, default=32, help="auto grouping: most distinct values")
    parser.add_argument(
        "--blank_input",
        default=None,
        help="the blank-image control: OUT.blank.jsonl from verl.eval.generate --blank_images on the same "
        "data; adds accuracy_blank_image, vision_reliance and accuracy_drop",
    )
    parser.add_argument(
        "--missing_description",
        choices=("zero", "whole_response"),
        default="zero",
        help="a response without <description>: zero = insufficient, not re-asked; whole_response = "
        "re-ask with the whole response (the reference; leaks the answer)",
    )

    perception = parser.add_argument_group("perception re-answers by a model")
    perception.add_argument("--self_reward_model", default=None, help="checkpoint that re-answers (text only)")
    # Defaults: the GPU recipe's self_reward caps, so perception scores as the trainer's validation
    # does (tests/eval/test_caps.py checks they agree).
    perception.add_argument(
        "--reanswer_max_prompt_length", type=int, default=2560,
        help="re-prompt tokens (default: the GPU recipe's self_reward.max_prompt_length, %(default)s)",
    )
    perception.add_argument(
        "--reanswer_max_response_length", type=int, default=1024,
        help="re-answer tokens (default: the GPU recipe's self_reward.max_response_length, %(default)s)",
    )
    add_engine_arguments(parser, default_engine="hf")

    judge = parser.add_argument_group("OpenAI-compatible servers (keys from the environment)")
    judge.add_argument("--judge", choices=("openai",), default=None, help="perception re-answers by a server")
    judge.add_argument("--judge_base_url", default=None, help="e.g. http://127.0.0.1:8000/v1")
    judge.add_argument("--judge_model", default=None)
    judge.add_argument("--judge_api_key_env", default="OPENAI_API_KEY", help="env var holding the key")
    judge.add_argument(
        "--answer_judge_model_path", default=None,
        help="a local judge model folder (Qwen2.5-VL) run by --engine, instead of an answer-judge server",
    )
    judge.add_argument("--answer_judge_max_tokens", type=int, default=256, help="local judge: reply tokens")
    judge.add_argument("--answer_judge_base_url", default=None, help="LLM check of rule-graded wrong answers")
    judge.add_argument("--answer_judge_model", default=None)
    judge.add_argument("--answer_judge_api_key_env", default="OPENAI_API_KEY", help="env var holding the key")
    judge.add_argument("--judge_timeout_s", type=float, default=60.0, help="per request")
    judge.add_argument("--judge_max_retries", type=int, default=2, help="retries before a request is an error")
    judge.add_argument("--judge_max_workers", type=int, default=16, help="concurrent requests")
    judge.add_argument(
        "--judge_max_error_rate", type=float, default=DEFAULT_JUDGE_MAX_ERROR_RATE,
        help="share of a batch's judge requests that may fail (scored as errors); more stops the scoring (1: never)",
    )

    args = parser.parse_args(argv)
    if args.self_reward_model and args.judge:
        parser.error("--self_reward_model and --judge both re-answer perceptions; give one")
    if args.judge and not (args.judge_base_url and args.judge_model):
        parser.error("--judge openai needs --judge_base_url and --judge_model")
    if args.answer_judge_model_path and args.answer_judge_base_url:
        parser.error("--answer_judge_model_path and --answer_judge_base_url are two judges; give one")
    if bool(args.answer_judge_base_url) != bool(args.answer_judge_model):
        parser.error("--answer_judge_base_url and --answer_judge_model go together")
    if args.judge_max_retries < 0:
        parser.error(f"--judge_max_retries must be >= 0, got {args.judge_max_retries}")
    if not 0 <= args.judge_max_error_rate <= 1:
        parser.error(f"--judge_max_error_rate must be in [0, 1], got {args.judge_max_error_rate}")
    return args


def make_openai_judge(args: argparse.Namespace, base_url: str, model: str, key_env: str) -> OpenAIJudge:
    api_key = os.environ.get(key_env)
    if not api_key:
        logger.warning("%s is not set: requests to %s go without an API key", key_env, base_url)
    return OpenAIJudge(
        base_url=base_url,
        model=model,
        api_key=api_key,
        timeout_s=args.judge_timeout_s,
        max_retries=args.judge_max_retries,
        max_workers=args.judge_max_workers,
        max_error_rate=args.judge_max_error_rate,
    )


def reanswers_from_args(
    args: argparse.Namespace, records: Sequence[ResponseRecord]
) -> tuple[Reanswers | None, str | None]:
    """The perception re-answers the command line asks for, and who gave them (None: none asked)."""
    responses = [record.response for record in records]
    questions = [record.problem for record in records]
    if args.self_reward_model:
        check_model_path(args.self_reward_model, "--self_reward_model")
        tokenizer = AutoTokenizer.from_pretrained(args.self_reward_model)
        engine = build_engine(
            args,
            args.self_reward_model,
            DEFAULT_MIN_PIXELS,  # re-prompts are text only: the pixel range is never used
            DEFAULT_MAX_PIXELS,
            context_length=args.reanswer_max_prompt_length + args.reanswer_max_response_length,
            max_images_per_prompt=1,
        )
        reanswers = reanswer_with_engine(
            engine, tokenizer, responses, questions, args.missing_description,
            args.reanswer_max_prompt_length, args.reanswer_max_response_length,
        )
        return reanswers, f"model:{args.self_reward_model}"
    if args.judge:
        judge = make_openai_judge(args, args.judge_base_url, args.judge_model, args.judge_api_key_env)
        reanswers = reanswer_with_judge(judge, responses, questions, args.missing_description)
        return reanswers, f"openai:{args.judge_model}@{args.judge_base_url}"
    return None, None


def load_reward(
    reward_name: str | None, reward_kwargs_json: str, grader: str | None, reanswering: bool,
    timeout_s: float = DEFAULT_REWARD_TIMEOUT_S,
) -> LoadedRewardFunction:
    """The reward function the command line names (default: sr1 with re-answers, see_think
    without), each call limited to `timeout_s` seconds."""
    reward_name = reward_name or ("sr1" if reanswering else "see_think")
    if reward_name == "sr1" and not reanswering:
        raise ValueError(
            "--reward sr1 scores perceptions by their re-answers: add --self_reward_model DIR or --judge openai; "
            "--reward see_think gives the same accuracy and format without them"
        )
    try:
        reward_kwargs = json.loads(reward_kwargs_json)
    except json.JSONDecodeError as error:
        raise ValueError(f"--reward_kwargs is not JSON: {error}") from error
    if not isinstance(reward_kwargs, dict):
        raise ValueError(f"--reward_kwargs must be a JSON object, got {reward_kwargs_json!r}")
    if grader is not None:
        if reward_name not in BUILTIN_REWARD_FUNCTIONS:
            raise ValueError(f"--grader applies to the built-in rewards, not {reward_name!r}")
        reward_kwargs["grader"] = grader
    if not timeout_s > 0:
        raise ValueError(f"--reward_timeout_s must be > 0, got {timeout_s}")
    return load_reward_function(reward_name, reward_kwargs, timeout_s, timeout_setting="--reward_timeout_s")


@dataclass
class ScoringResult:
    summary: dict[str, Any]
    scored_lines: list[str]


def score_file(
    input_path: str,
    reward_fn: LoadedRewardFunction,
    reanswer: Callable[[Sequence[ResponseRecord]], tuple[Reanswers | None, str | None]],
    answer_judge: tuple[ReanswerJudge, str] | None = None,
    blank_input: str | None = None,
    group_by: list[str] | None = None,
    max_groups: int = 32,
    missing_description: str = "zero",
) -> ScoringResult:
    """Score one generate.py output: the summary (overall and per group) and the scored records.

    ``reanswer`` gives the perception re-answers (and who gave them) or (None, None);
    ``answer_judge`` = (judge, its name) re-checks the answers the rule-based grader marks wrong.
    """
    records = read_records(input_path)
    columns = group_by if group_by is not None else group_columns(records, max_groups)
    for column in columns:
        lacking = next((record for record in records if column not in record.raw), None)
        if lacking is not None:
            raise ValueError(f"{input_path} line {lacking.line}: no column {column!r} to group by")
    reanswers, reanswerer = reanswer(records)
    scores = score_records(records, reward_fn, reanswers, input_path)
    verdicts: dict[int, str] | None = None
    if answer_judge is not None:
        if "accuracy" not in scores[0]:
            raise ValueError(f"the answer judge re-checks wrong answers: reward {reward_fn.name!r} gives no 'accuracy'")
        wrong = [i for i, score in enumerate(scores) if score["accuracy"] != 1.0]
        verdicts = judge_answers(answer_judge[0], records, wrong)
    blank_records = (
        pair_blank_records(records, read_records(blank_input), blank_input) if blank_input else None
    )
    rows = per_record_metrics(records, scores, reanswers, verdicts, blank_records)
    summary = {
        "input": os.path.abspath(input_path),
        "data": generated_from(input_path),
        "reward": reward_fn.name,
        "grader": reward_fn.kwargs.get("grader", DEFAULT_GRADER),
        "reanswerer": reanswerer,
        "answer_judge": answer_judge[1] if answer_judge is not None else None,
        "missing_description": missing_description,
        "blank_input": os.path.abspath(blank_input) if blank_input else None,
        **({"reanswer_metrics": reanswers.metrics} if reanswers is not None and reanswers.metrics else {}),
        "clip_ratios": clip_ratios(records, reanswers),
        **skipped_rows_of(input_path),
        **summarize(records, rows, columns),
    }
    scored_lines = []
    for i, (record, row) in enumerate(zip(records, rows)):
        # "score": the reference's per-record field (its judge scripts read it as the rule-based score).
        scored = {**record.raw, "score": row.get("accuracy", row["overall"]), "scores": row}
        if reanswers is not None:
            scored["perception"] = reanswers.descriptions[i]
            scored["reanswers"] = reanswers.texts[i]
            if reanswers.clipped is not None:
                scored["reanswers_clipped"] = reanswers.clipped[i]
        if verdicts is not None:
            scored["answer_judge_verdict"] = verdicts.get(i)
        if blank_records is not None:
            scored["blank_image_response"] = blank_records[i].response
        scored_lines.append(json.dumps(scored, ensure_ascii=False) + "\n")
    return ScoringResult(summary, scored_lines)


def clip_ratios(records: Sequence[ResponseRecord], reanswers: Reanswers | None) -> dict[str, float]:
    """The trainer's two clip ratios (`verl.stages.clipping`) for this file: responses cut at
    generate's --max_response_length (records that say whether they finished), and re-answers cut
    at --reanswer_max_response_length (re-answers by a model); a ratio that cannot be known is left out."""
    ratios = {}
    known = [record.finished for record in records if record.finished is not None]
    if known:
        ratios[RESPONSE_CLIP_RATIO] = clip_ratio(np.asarray(known))
    if reanswers is not None and PASS2_CLIP_RATIO in reanswers.metrics:
        ratios[PASS2_CLIP_RATIO] = reanswers.metrics[PASS2_CLIP_RATIO]
    return ratios


def generated_from(input_path: str) -> str | None:
    """The dataset the responses were generated from (`data` of OUT.generation.json, which
    `verl.eval.generate` writes); None for files from elsewhere."""
    path = sidecar_path(input_path, ".generation.json")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as file:
        return json.load(file).get("data")


def skipped_rows_of(input_path: str) -> dict[str, Any]:
    """`skipped_rows` (and their count) from OUT.skipped.json, which `verl.eval.generate
    --skip_bad_rows` writes: rows left out of the benchmark must show next to its accuracy."""
    path = sidecar_path(input_path, ".skipped.json")
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as file:
        rows = json.load(file)["skipped_rows"]
    return {"n_skipped_rows": len(rows), "skipped_rows": rows}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    reward_fn = load_reward(
        args.reward, args.reward_kwargs, args.grader, bool(args.self_reward_model or args.judge), args.reward_timeout_s
    )
    answer_judge = None
    if args.answer_judge_base_url:
        answer_judge = (
            make_openai_judge(args, args.answer_judge_base_url, args.answer_judge_model, args.answer_judge_api_key_env),
            f"openai:{args.answer_judge_model}@{args.answer_judge_base_url}",
        )
    elif args.answer_judge_model_path:
        check_model_path(args.answer_judge_model_path, "--answer_judge_model_path")
        # Built when first asked, after the re-answering engine is gone: two engines need not share the GPU.
        answer_judge = (
            LazyJudge(lambda: EngineJudge.from_args(
                args, args.answer_judge_model_path, args.answer_judge_max_tokens, args.judge_max_error_rate
            )),
            f"local:{args.answer_judge_model_path}",
        )
    result = score_file(
        args.input, reward_fn, lambda records: reanswers_from_args(args, records), answer_judge,
        args.blank_input, args.group_by, args.max_groups, args.missing_description,
    )
    write_atomically(sidecar_path(args.input, ".scored.jsonl"), "".join(result.scored_lines))
    write_atomically(sidecar_path(args.input, ".summary.json"), json.dumps(result.summary, indent=1) + "\n")
    print(f"{args.input}: reward {reward_fn.name}, perception re-answers by {result.summary['reanswerer'] or 'nobody'}")
    print(format_table(result.summary))
    warn_on_clipping(result.summary["clip_ratios"], EVAL_CAP_FLAGS, args.input)
    return result.summary


if __name__ == "__main__":
    try:
        main()
    except (ModelPathError, RewardFunctionError, JudgeFailedError, JudgeTimeoutError) as error:
        raise SystemExit(f"error: {error}") from None
