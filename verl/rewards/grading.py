"""Choose the answer grader by name: ``builtin`` (verl.rewards.grader), ``mathruler``, ``math_verify``.

Every grader answers one question: is the final ``\\boxed{}`` answer of a response the ground
truth? Each never raises (odd input grades as wrong).

- ``builtin``: this project's grader (``verl.rewards.grader``): mathruler's rules plus what the
  visual-QA answers of Vision-SR1's data need and neither library does (option letters vs option
  text, number words, units, ``B) text``). The default: right on the most cases of
  ``benchmarks/grader_cases.py`` (table in docs/rewards.md).
- ``mathruler``: the PyPI ``mathruler`` package, the reference implementation's own grader, with its
  own ``\\boxed{}`` extraction: choose it to compare scores with the paper's.
- ``math_verify``: Hugging Face's ``math-verify`` (TRL / open-r1), on our extracted ``\\boxed{}``
  answer. Its parse/verify time-outs use signals, which only work in the main thread; elsewhere
  they are off.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from verl.rewards import grader as builtin_grader

logger = logging.getLogger(__name__)

ResponseGrader = Callable[[str, str, "str | None"], bool]
"""grade(response, ground_truth, problem) -> whether the response's final answer is correct."""

DEFAULT_GRADER = "builtin"


def _builtin(response: str, ground_truth: str, problem: str | None = None) -> bool:
    return builtin_grader.grade_response(response, ground_truth, problem)


def _mathruler(response: str, ground_truth: str, problem: str | None = None) -> bool:
    from mathruler.grader import extract_boxed_content, grade_answer

    try:
        # The reference: grade_answer(extract_boxed_content(response), ground_truth); "None" = no box.
        answer = extract_boxed_content(response)
        return answer != "None" and bool(grade_answer(answer, ground_truth))
    except Exception:  # noqa: BLE001 - a library crash on odd input must not kill a run
        logger.warning("mathruler failed on response=%r ground_truth=%r", response[-200:], ground_truth[:200])
        return False


def _math_verify(response: str, ground_truth: str, problem: str | None = None) -> bool:
    from math_verify import parse, verify

    answer = builtin_grader.extract_boxed(response)
    if not answer or not ground_truth.strip():
        return False
    timeout = 5 if threading.current_thread() is threading.main_thread() else None
    try:
        gold = parse(f"\\boxed{{{ground_truth}}}", parsing_timeout=timeout)
        given = parse(f"\\boxed{{{answer}}}", parsing_timeout=timeout)
        return bool(gold) and bool(given) and bool(verify(gold, given, timeout_seconds=timeout))
    except Exception:  # noqa: BLE001 - a library crash on odd input must not kill a run
        logger.warning("math_verify failed on answer=%r ground_truth=%r", answer[:200], ground_truth[:200])
        return False


GRADERS: dict[str, ResponseGrader] = {
    "builtin": _builtin,
    "mathruler": _mathruler,
    "math_verify": _math_verify,
}


def get_grader(name: str) -> ResponseGrader:
    """The grader called ``name``; a ValueError listing the choices for an unknown name."""
    if name not in GRADERS:
        raise ValueError(f"unknown grader {name!r}: choose one of {', '.join(GRADERS)}")
    return GRADERS[name]
