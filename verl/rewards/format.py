"""Response-format checks and the perception (``<description>``) extraction.

Decisions:

- Tag spelling: ``<description>``, ``</description>``, ``<think>``, ``</think>``, lower-case;
  whitespace inside the angle brackets is tolerated (``< think >``, ``</ description>``), which
  the reference handled by deleting all whitespace around every ``<``, ``>`` and ``/`` of the
  response (also inside the answer); here only the tags themselves are normalised.
- Every block must have non-blank content, each tag appears exactly once, and ``\\boxed{}`` must
  be balanced and non-empty: an empty perception or reasoning block earns no format credit
  (the reference's ``.*?`` accepted empty blocks).
- sr1 / cot formats: nothing but whitespace may follow the ``\\boxed{...}`` (the reference's
  ``\\s*$``), so ``\\boxed{5}.`` fails.
- ``extract_description``: the FIRST ``<description>`` and the first ``</description>`` after it;
  nested tags are not paired, the text runs to the first closing tag
  (``<description>a<description>b</description>c</description>`` -> ``a<description>b``).
- Two tag styles (``TAG_STYLES``): ``sr1``, the reference code's ``<description>`` /
  ``<think>`` / ``\\boxed{}``, and ``paper_v2``, the ICLR 2026 paper's ``<visual reasoning>`` /
  ``<think>`` / ``<answer>``. Under ``paper_v2`` the perception is the first ``<visual reasoning>``
  block and the graded answer is the first ``<answer>`` block (``graded_answer``); the same
  rules hold (non-blank blocks, each tag once, whitespace inside the angle brackets tolerated).
"""

import re

from verl.rewards.grader import extract_boxed

_TAG = re.compile(r"<\s*(/?)\s*(description|think)\s*>")
_ANY_TAG = re.compile(r"</?(?:description|think)>")
_SR1_LAYOUT = re.compile(
    r"\s*<description>(?P<description>.*?)</description>\s*<think>(?P<think>.*?)</think>(?P<answer>.*)",
    re.DOTALL,
)
_THINK_LAYOUT = re.compile(r"\s*<think>(?P<think>.*?)</think>(?P<answer>.*)", re.DOTALL)
_BOXED_ONLY = re.compile(r"\s*\\boxed\s*\{(?P<content>.*)\}\s*", re.DOTALL)
_V2_TAG = re.compile(r"<\s*(/?)\s*(visual\s+reasoning|think|answer)\s*>")
_V2_ANY_TAG = re.compile(r"</?(?:visual reasoning|think|answer)>")
_V2_LAYOUT = re.compile(
    r"\s*<visual reasoning>(?P<perception>.*?)</visual reasoning>\s*<think>(?P<think>.*?)</think>"
    r"\s*<answer>(?P<answer>.*?)</answer>\s*",
    re.DOTALL,
)

TAG_STYLES: tuple[str, ...] = ("sr1", "paper_v2")
PERCEPTION_TAG = {"sr1": "description", "paper_v2": "visual reasoning"}
"""Tag style -> the block holding the perception the self-reward re-prompts with."""


def sr1_format_ok(response: str) -> bool:
    """``<description>...</description> <think>...</think> \\boxed{...}`` and nothing else."""
    match = _SR1_LAYOUT.fullmatch(_normalize_tags(response))
    return (
        match is not None
        and _is_block_content(match.group("description"))
        and _is_block_content(match.group("think"))
        and _is_single_boxed(match.group("answer"))
    )


def cot_format_ok(response: str) -> bool:
    """``<think>...</think> \\boxed{...}`` and nothing else (the reference's chain-of-thought format)."""
    match = _THINK_LAYOUT.fullmatch(_normalize_tags(response))
    return (
        match is not None
        and _is_block_content(match.group("think"))
        and _is_single_boxed(match.group("answer"))
    )


def r1v_format_ok(response: str) -> bool:
    """``<think>...</think>`` first, then an answer part that contains a non-empty ``\\boxed{...}``.

    The answer part may hold other text (``<answer>The answer is \\boxed{5}.</answer>``) but no
    further think/description tags.
    """
    match = _THINK_LAYOUT.fullmatch(_normalize_tags(response))
    if match is None or not _is_block_content(match.group("think")):
        return False
    answer = match.group("answer")
    return not _ANY_TAG.search(answer) and bool(extract_boxed(answer))


def sr1_v2_format_ok(response: str) -> bool:
    """``<visual reasoning>...</visual reasoning> <think>...</think> <answer>...</answer>`` and
    nothing else, every block non-blank (the ICLR 2026 paper's tags)."""
    match = _V2_LAYOUT.fullmatch(_normalize_v2_tags(response))
    return match is not None and all(
        match.group(block).strip() and not _V2_ANY_TAG.search(match.group(block))
        for block in ("perception", "think", "answer")
    )


def extract_description(response: str) -> str | None:
    """Stripped text of the first ``<description>`` block; None when missing or never closed.

    An empty block gives "" (callers treat it as missing perception).
    """
    return _first_block(_normalize_tags(response), "description")


def extract_perception(response: str, tags: str = "sr1") -> str | None:
    """The perception block of tag style ``tags`` (``PERCEPTION_TAG``), as ``extract_description``."""
    if tags == "sr1":
        return extract_description(response)
    return _first_block(_normalize_v2_tags(response), PERCEPTION_TAG[tags])


def graded_answer(response: str, tags: str = "sr1") -> str:
    """The text an answer grader reads (graders grade the last ``\\boxed{}``): the response itself
    for ``sr1``; for ``paper_v2`` the first ``<answer>`` block, boxed unless it holds a box
    already, or "" (graded wrong) without one."""
    if tags == "sr1":
        return response
    answer = _first_block(_normalize_v2_tags(response), "answer")
    if not answer:
        return ""
    return answer if extract_boxed(answer) else f"\\boxed{{{answer}}}"


def _first_block(text: str, tag: str) -> str | None:
    """Stripped text between the first ``<tag>`` and the first ``</tag>`` after it; None when
    missing or never closed."""
    start = text.find(f"<{tag}>")
    if start == -1:
        return None
    content_start = start + len(tag) + 2
    end = text.find(f"</{tag}>", content_start)
    if end == -1:
        return None
    return text[content_start:end].strip()


def _normalize_tags(response: str) -> str:
    if not isinstance(response, str):
        return ""
    return _TAG.sub(r"<\1\2>", response)


def _normalize_v2_tags(response: str) -> str:
    if not isinstance(response, str):
        return ""
    return _V2_TAG.sub(lambda match: f"<{match[1]}{' '.join(match[2].split())}>", response)


def _is_block_content(content: str) -> bool:
    return bool(content.strip()) and not _ANY_TAG.search(content)


def _is_single_boxed(answer: str) -> bool:
    """``answer`` is exactly one balanced, non-empty ``\\boxed{...}`` with optional whitespace around."""
    match = _BOXED_ONLY.fullmatch(answer)
    if match is None or _ANY_TAG.search(answer):
        return False
    content = extract_boxed(answer)
    # The last \boxed must be the first one and close at the final brace: "\boxed{1} \boxed{2}" fails.
    return bool(content) and answer.count("\\boxed") == 1 and content == match.group("content").strip()
