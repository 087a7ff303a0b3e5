"""Answer grader shared by the rewards and the evaluation: is a model's final answer the ground truth?

A mathruler-style grader (string normalisation, then numbers, then sympy), extended for the
visual-QA answers of Vision-SR1's data (multiple-choice letters, short phrases).
``grade_answer`` never raises: odd input grades as wrong.

Decisions (each one is tested in tests/rewards/test_grader.py):

- ``extract_boxed`` takes the LAST ``\\boxed`` in the text; whitespace between ``\\boxed`` and its
  brace is accepted (``\\boxed {5}``, as LaTeX does); escaped braces ``\\{ \\}`` do not count for
  nesting; if that last ``\\boxed`` is never closed (a truncated response) the result is None,
  not an earlier box.
- Text: case, surrounding whitespace, spaces next to symbols, a trailing ``.``/``,``/``;``/``:``
  and surrounding quotes are ignored. Pure-word answers also ignore punctuation and the articles
  a/an/the ("The Eiffel Tower." == "eiffel tower"); number words zero..twenty equal their digits.
- LaTeX: ``$``, ``\\( \\)``, ``\\[ \\]``, ``\\left``/``\\right``, spacing commands,
  ``\\displaystyle``, degree marks (``^\\circ``, ``°``) are dropped; ``\\text{}``, ``\\mathrm{}``,
  ``\\mathbf{}``, ``\\mbox{}``, ``\\operatorname{}``... are unwrapped; ``\\dfrac``/``\\tfrac`` are
  ``\\frac``. A trailing unit word ("cm", "degrees", "square units", ...) is dropped when a number
  remains; one-letter units (m, s, g, l) only right after a plain number ("5 m", not "x m").
  ``x = 5`` equals ``5`` (a single-letter left-hand side is dropped).
- Numbers: thousands separators (``1,000``), decimals, ``a/b``, ``\\frac{a}{b}``, ``\\frac12``,
  mixed numbers (``1\\frac{1}{2}``, ``1 1/2``) and scientific notation are parsed exactly. When
  either side is an integer the values must be equal (``12346`` is not ``12345``; mathruler's rule);
  two fractions must be written alike (``2/4`` is not ``1/2``; mathruler's rule); otherwise values
  compare with a relative tolerance of 1e-4 (``0.33333`` is ``1/3``). A percent sign on either side
  allows both readings: ``50%`` equals ``50`` (mathruler strips the sign; datasets store
  percentages both ways) and ``0.5``.
- Sets: ``\\{1,2\\}`` is ``{1,2}``, and braced sets compare in any order.
- Multiple choice: when the ground truth is an option letter (``B``, ``(B)``, ``B.``), the given
  answer must be an option letter too: ``B``, ``(B)``, ``B.``, ``B)``, ``B:``, ``B) text``,
  ``option B``; ``B text`` (no delimiter) is not a letter, so ``A cat`` is not option A. Lower-case
  letters count only bare (``b``), since ``a)`` or ``b.`` are list markers and words. A given
  answer that is an option's TEXT matches only when ``problem`` is passed, its options can be
  parsed (``A. x`` / ``(A) x`` / ``A: x``, consecutive letters from A) and exactly one option
  matches. Symmetrically a given letter is accepted for a text ground truth when that option's
  text (and only that one) matches it.
- Tuples and intervals compare element by element (same brackets, same length, same order).
- Expressions: when sympy is installed, short strings (<= 64 characters) made only of numbers,
  single-letter variables, + - * / ^ ( ) and sqrt/pi/sin/cos/tan/log/ln/exp are equal when their
  difference expands to 0 or they agree (relative 1e-4) at three fixed sample points; constants
  compare by value (an integer constant only exactly). Everything else is rejected before sympy sees it, because sympy's parser
  evaluates Python code and huge powers would hang it: no constant exponent above 100, no
  constant power of a constant power. sympy.simplify is never called (tens of ms, unbounded).
"""

import cmath
import logging
import math
import re
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from types import ModuleType
from typing import Any

logger = logging.getLogger(__name__)

RELATIVE_TOLERANCE = 1e-4
"""Two numbers are equal when they differ by at most this fraction of the larger magnitude."""

SYMPY_MAX_CHARS = 64
"""Longer strings are never handed to sympy: parsing costs milliseconds and grows with length."""

_MAX_CONSTANT_EXPONENT = 100
# Scientific-notation exponents beyond this are not compared (a float would overflow there too).
_MAX_DECIMAL_EXPONENT = 300
# Longer strings are not numbers (and int() refuses over 4300 digits).
_MAX_NUMBER_CHARS = 100
# Values substituted for the variables when comparing two expressions numerically.
_SAMPLE_VALUES = (0.5772156649, 1.6180339887, 2.7182818285)

_BOXED_START = re.compile(r"\\boxed\s*\{")

# Commands whose single brace argument is the visible text: \text{cm} -> cm.
_UNWRAPPED_COMMANDS = (
    "text", "textbf", "textit", "textrm", "textnormal", "mathrm", "mathbf", "mathit", "mathsf",
    "mathtt", "mathbb", "mbox", "operatorname", "boxed", "fbox",
)
_UNWRAP_COMMAND = re.compile(r"\\(?:" + "|".join(_UNWRAPPED_COMMANDS) + r")\s*\{")
_DROPPED_LATEX = re.compile(
    r"\\left\s*\.|\\right\s*\.|\\left(?![a-z])|\\right(?![a-z])|\\displaystyle|\\[,;:!> ]|"
    r"\\q?quad(?![a-z])|\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|\\circ(?![a-z])|\\degree(?![a-z])|°|"
    r"\\\(|\\\)|\\\[|\\\]|\\\$|\$"
)
_UNICODE_REPLACEMENTS = {"\u2212": "-", "\u00d7": r"\times", "\u00f7": r"\div", "\u03c0": r"\pi", "~": " "}

_UNIT_WORDS = (
    "units?", "degrees?", "deg", "radians?", "rad", "cm", "mm", "km", "meters?", "metres?",
    "centimeters?", "centimetres?", "millimeters?", "kilometers?", "inch(?:es)?", "in", "feet", "foot",
    "ft", "yards?", "yd", "miles?", "mi", "seconds?", "sec", "minutes?", "min", "hours?", "hrs?",
    "days?", "weeks?", "months?", "years?", "dollars?", "cents?", "kg", "grams?", "kilograms?",
    "pounds?", "lbs?", "ounces?", "oz", "liters?", "litres?", "ml", "mph", "km/h", "m/s",
    "people", "persons?", "students?", "times", "pieces?", "items?", "objects?",
)
_UNIT_SUFFIX = r"(?:\^\{?[23]\}?|[²³])?$"
_TRAILING_UNIT = re.compile(
    r"(?:^|(?<=[\s\d)}]))(?:(?:square|sq\.?|cubic)\s*)?(?:" + "|".join(_UNIT_WORDS) + r")" + _UNIT_SUFFIX
)
# One-letter units (5 m, 3 s, 2 g, 1 l) are also variables, so they go only after a plain number.
_NUMBER_WITH_LETTER_UNIT = re.compile(r"^([-+]?[\d.,]*\d)\s*[msgl]" + _UNIT_SUFFIX)
_SINGLE_LETTER_LHS = re.compile(r"^[a-z](?:_\{?[a-z0-9]\}?)?=(?!=)(.+)$")
_THOUSANDS_NUMBER = re.compile(r"^[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")

_NUMBER_WORDS = {
    word: value
    for value, word in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
        "fifteen sixteen seventeen eighteen nineteen twenty".split()
    )
}
_NUM = r"(?:\d+(?:\.\d*)?|\.\d+)"
_DECIMAL = re.compile(rf"^([-+]?)({_NUM}(?:e[-+]?\d+)?)$")
_SLASH_FRACTION = re.compile(rf"^([-+]?)({_NUM})/({_NUM})$")
_LATEX_FRACTION = re.compile(rf"^([-+]?)\\frac\{{([-+]?{_NUM})\}}\{{([-+]?{_NUM})\}}$")
_MIXED_NUMBER = re.compile(r"^([-+]?)(\d+)(?:\s*\\frac\{(\d+)\}\{(\d+)\}|\s+(\d+)/(\d+))$")
_SHORT_FRACTION = re.compile(r"\\frac\s*(?:\{([^{}]*)\}|(\w))\s*(?:\{([^{}]*)\}|(\w))")

_PURE_WORDS = re.compile(r"[a-z][a-z\s'\-.,!?;:\"]*")
_ARTICLES = frozenset({"a", "an", "the"})

_CHOICE_LETTER = re.compile(
    r"^(?:(?:the\s+)?(?:correct\s+)?(?:answer|option|choice)\s*(?:is\s*)?:?\s*)?"
    r"(?:\(([A-Z])\)|\[([A-Z])\]|([A-Z])(?=[.):\]]|$))[.):\]]?(?:\s+.*)?$",
    re.IGNORECASE | re.DOTALL,
)
_OPTION_MARKER = re.compile(r"(?:(?<![A-Za-z0-9])\(([A-Z])\)|(?<![A-Za-z0-9(\[])([A-Z])[.):])[ \t]*")

_SYMPY_FUNCTIONS = ("sqrt", "pi", "sin", "cos", "tan", "log", "ln", "exp")
_SYMPY_SAFE_CHARS = re.compile(r"[0-9a-z+\-*/^().\s]*")
# The sympy names the code generated by parse_expr's transformations refers to.
_SYMPY_PARSER_NAMES = ("Integer", "Float", "Rational", "Symbol", "Function", "Mul", "Pow", "Add")
_LATEX_TO_SYMPY = {
    r"\cdot": "*", r"\times": "*", r"\div": "/", r"\pi": " pi ", r"\sin": " sin", r"\cos": " cos",
    r"\tan": " tan", r"\ln": " ln", r"\log": " log", r"\exp": " exp",
}


def extract_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` in ``text`` (nested braces balanced), stripped.

    None when there is no ``\\boxed`` or the last one is never closed. ``\\boxed{}`` gives "".
    """
    if not isinstance(text, str):
        return None
    starts = list(_BOXED_START.finditer(text))
    if not starts:
        return None
    open_index = starts[-1].end() - 1
    close_index = _matching_brace(text, open_index)
    if close_index is None:
        return None
    return text[open_index + 1 : close_index].strip()


def normalize_answer(answer: str) -> str:
    """Canonical string form of an answer: LaTeX wrappers, case, spacing, units, separators.

    Two answers with equal normal forms are equal; the numeric and symbolic checks of
    ``grade_answer`` start from this form.
    """
    if not isinstance(answer, str):
        return ""
    text = _clean_latex(answer).lower()
    text = re.sub(r"\s+", " ", text).strip()
    # Spaces next to symbols carry no meaning ("x + 1" == "x+1"); spaces between words do.
    text = re.sub(r"\s*([^\w\s\\])\s*", r"\1", text)
    text = re.sub(r"[.,;:。]+$", "", text).strip()
    text = text.strip("\"'`")
    text = re.sub(r"\s*percent$", "%", text)
    text = _drop_trailing_units(text)
    lhs_match = _SINGLE_LETTER_LHS.match(text)
    if lhs_match:
        text = lhs_match.group(1)
    if _THOUSANDS_NUMBER.match(text):
        text = text.replace(",", "")
    return text


def grade_answer(given: str | None, ground_truth: str | None, problem: str | None = None) -> bool:
    """Whether ``given`` is the same answer as ``ground_truth`` (rules in the module docstring).

    ``problem`` (the question text) is only used to read multiple-choice options, so that an
    option's text can stand for its letter and vice versa. Never raises: anything that cannot be
    graded (None, non-strings, empty answers, input that breaks a parser) is wrong.
    """
    if not isinstance(given, str) or not isinstance(ground_truth, str):
        return False
    try:
        return _grade(given, ground_truth, problem if isinstance(problem, str) else None)
    except Exception:  # noqa: BLE001 - a grader crash must not kill a training run; logged below
        logger.warning(
            "grade_answer failed on given=%r ground_truth=%r", given[:200], ground_truth[:200], exc_info=True
        )
        return False


def grade_response(response: str, ground_truth: str, problem: str | None = None) -> bool:
    """Whether the last ``\\boxed{}`` answer of ``response`` is ``ground_truth`` (False without one)."""
    answer = extract_boxed(response)
    return answer is not None and grade_answer(answer, ground_truth, problem)


def choice_letter(answer: str) -> str | None:
    """The option letter an answer names (``B``, ``(B)``, ``B.``, ``B) text``, ``option B``), upper-case.

    None when the answer is not in one of those forms (``B text``, ``AB``, ``B, C``, ``10``).
    """
    match = _CHOICE_LETTER.match(_clean_latex(answer).strip())
    if match is None:
        return None
    letter = next(group for group in match.groups() if group)
    bare_lowercase = letter.islower() and match.group(0).strip() != letter
    # "a) text" / "b." are list markers or words as often as options; only upper-case counts there.
    return None if bare_lowercase else letter.upper()


def parse_options(problem: str) -> dict[str, str]:
    """Multiple-choice options written in ``problem``: {"A": text, "B": text, ...}.

    Options are markers ``A.``, ``A)``, ``A:`` or ``(A)`` with consecutive letters starting at A
    (on separate lines or inline); each text runs to the next marker or the end of its line. A new
    ``A`` restarts the list, so a stray "figure A." in the question does not break it. Fewer than
    two options -> {}.
    """
    if not isinstance(problem, str):
        return {}
    best: list[tuple[str, int, int]] = []
    current: list[tuple[str, int, int]] = []  # (letter, marker start, text start)
    for match in _OPTION_MARKER.finditer(problem):
        letter = match.group(1) or match.group(2)
        if letter == "A":
            if len(current) >= 2:
                best = current
            current = [(letter, match.start(), match.end())]
        elif current and ord(letter) == ord(current[-1][0]) + 1:
            current.append((letter, match.start(), match.end()))
    if len(current) >= 2:
        best = current
    options = {}
    for index, (letter, _, text_start) in enumerate(best):
        text_end = best[index + 1][1] if index + 1 < len(best) else len(problem)
        text = problem[text_start:text_end]
        text = text.split("\n", 1)[0] if index + 1 == len(best) else text
        options[letter] = text.strip().rstrip(",;").strip()
    return options


def _grade(given: str, ground_truth: str, problem: str | None) -> bool:
    truth_letter = choice_letter(ground_truth)
    given_letter = choice_letter(given)
    if truth_letter is not None:
        if given_letter is not None:
            return given_letter == truth_letter
        return _unique_matching_option(given, parse_options(problem or "")) == truth_letter
    if _grade_value(given, ground_truth):
        return True
    if given_letter is not None and problem:
        options = parse_options(problem)
        return given_letter in options and _unique_matching_option(ground_truth, options) == given_letter
    return False


def _unique_matching_option(answer: str, options: dict[str, str]) -> str | None:
    matching = [letter for letter, text in options.items() if text and _grade_value(answer, text)]
    return matching[0] if len(matching) == 1 else None


def _grade_value(given: str, ground_truth: str) -> bool:
    """Grade without the multiple-choice rules: tuples element-wise, else one value."""
    given_norm = normalize_answer(given)
    truth_norm = normalize_answer(ground_truth)
    if not given_norm or not truth_norm:
        return False
    if given_norm == truth_norm:
        return True
    given_words, truth_words = _word_key(given_norm), _word_key(truth_norm)
    if given_words is not None and truth_words is not None:
        return given_words == truth_words
    given_set, truth_set = _split_set(given_norm), _split_set(truth_norm)
    if given_set is not None and truth_set is not None:
        return _same_elements(given_set, truth_set)
    given_parts = _split_tuple(given_norm)
    truth_parts = _split_tuple(truth_norm)
    if given_parts is not None or truth_parts is not None:
        if given_parts is None or truth_parts is None:
            return False
        (given_brackets, given_items), (truth_brackets, truth_items) = given_parts, truth_parts
        return (
            given_brackets == truth_brackets
            and len(given_items) == len(truth_items)
            and all(_grade_scalar(g, t) for g, t in zip(given_items, truth_items))
        )
    return _grade_scalar(given_norm, truth_norm)


def _grade_scalar(given_norm: str, truth_norm: str) -> bool:
    """Compare two normalised single values: exact, numbers, then sympy."""
    if given_norm == truth_norm:
        return True
    given_number, truth_number = _parse_number(given_norm), _parse_number(truth_norm)
    if given_number is not None and truth_number is not None:
        return _numbers_equal(given_number, truth_number)
    return _sympy_equal(given_norm, truth_norm)


@dataclass(frozen=True)
class _Number:
    """A parsed plain number: its exact value, whether it had a percent sign, its a/b form if written so."""

    value: Fraction
    is_percent: bool
    fraction_literal: tuple[Fraction, Fraction] | None
    """(signed numerator, denominator) of a number written as a/b or \\frac{a}{b}; None otherwise."""

    def readings(self) -> tuple[Fraction, ...]:
        # Datasets store percentages both ways: 50% may mean 50 or 0.5.
        return (self.value, self.value / 100) if self.is_percent else (self.value,)


def _numbers_equal(given: _Number, truth: _Number) -> bool:
    """Two fractions must be written alike (2/4 is not 1/2, as in mathruler); else value equality."""
    if given.fraction_literal is not None and truth.fraction_literal is not None:
        if not (given.is_percent or truth.is_percent):
            return given.fraction_literal == truth.fraction_literal
    return any(_values_equal(g, t) for g in given.readings() for t in truth.readings())


def _values_equal(a: Fraction, b: Fraction) -> bool:
    """Exact when either side is an integer (10001 is not 10000); else within RELATIVE_TOLERANCE."""
    if a.denominator == 1 or b.denominator == 1:
        return a == b
    return math.isclose(float(a), float(b), rel_tol=RELATIVE_TOLERANCE, abs_tol=0.0)


def _word_key(text: str) -> str | None:
    """Punctuation- and article-free key of a pure-word answer; None for anything with digits/math."""
    if not _PURE_WORDS.fullmatch(text) or text in _NUMBER_WORDS:
        return None
    words = re.sub(r"[^a-z\s]", " ", text.replace("'", "")).split()
    content_words = [word for word in words if word not in _ARTICLES]
    return " ".join(content_words or words)


def _parse_number(text: str) -> _Number | None:
    """A normalised plain number, fraction or mixed number, exactly; None for anything else."""
    if len(text) > _MAX_NUMBER_CHARS:
        return None
    is_percent = text.endswith("%")
    if is_percent:
        text = text[:-1]
    if text in _NUMBER_WORDS:
        return _Number(Fraction(_NUMBER_WORDS[text]), is_percent, None)
    text = _expand_short_fractions(text)
    if match := _DECIMAL.match(text):
        exponent = re.search(r"e([-+]?\d+)$", match.group(2))
        if exponent and abs(int(exponent.group(1))) > _MAX_DECIMAL_EXPONENT:
            return None  # 1e400 vs 1e500: too large to compare meaningfully (and 1e999999999 to build)
        value = Fraction(match.group(2))
        return _Number(-value if match.group(1) == "-" else value, is_percent, None)
    if match := _SLASH_FRACTION.match(text) or _LATEX_FRACTION.match(text):
        sign, numerator, denominator = match.groups()
        numerator_value, denominator_value = Fraction(numerator), Fraction(denominator)
        if denominator_value == 0:
            return None
        if sign == "-":
            numerator_value = -numerator_value
        return _Number(numerator_value / denominator_value, is_percent, (numerator_value, denominator_value))
    if match := _MIXED_NUMBER.match(text):
        sign, whole = match.group(1), match.group(2)
        numerator = match.group(3) or match.group(5)
        denominator = match.group(4) or match.group(6)
        if int(denominator) == 0:
            return None
        value = int(whole) + Fraction(int(numerator), int(denominator))
        return _Number(-value if sign == "-" else value, is_percent, None)
    return None


def _expand_short_fractions(text: str) -> str:
    r"""\frac12, \frac1{2}, \frac{1}2 -> \frac{1}{2}."""
    return _SHORT_FRACTION.sub(
        lambda match: rf"\frac{{{match.group(1) or match.group(2)}}}{{{match.group(3) or match.group(4)}}}", text
    )


def _split_tuple(text: str) -> tuple[str, list[str]] | None:
    """("()" / "[]" / "(]" / "", items) of a comma-separated tuple, interval or list; None otherwise."""
    brackets = ""
    inner = text
    if len(text) >= 2 and text[0] in "([" and text[-1] in ")]" and _encloses_whole(text):
        brackets, inner = text[0] + text[-1], text[1:-1]
    items = _split_top_level_commas(inner)
    if len(items) < 2:
        return None
    return brackets, items


def _split_set(text: str) -> list[str] | None:
    """Elements of a braced set ``{a,b}`` (``\\{a,b\\}`` is cleaned to it); None otherwise."""
    if len(text) >= 2 and text[0] == "{" and text[-1] == "}" and _encloses_whole(text):
        return [item for item in _split_top_level_commas(text[1:-1]) if item]
    return None


def _same_elements(given: list[str], truth: list[str]) -> bool:
    """Sets compare in any order: each truth element is matched by a different given element."""
    if len(given) != len(truth):
        return False
    unmatched = list(given)
    for element in truth:
        match = next((g for g in unmatched if _grade_scalar(g, element)), None)
        if match is None:
            return False
        unmatched.remove(match)
    return True


def _encloses_whole(text: str) -> bool:
    """Whether the opening bracket at text[0] closes only at the very end ("(1,2]" included)."""
    depth = 0
    for index, char in enumerate(text):
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
            if depth == 0 and index != len(text) - 1:
                return False
    return depth == 0


def _split_top_level_commas(text: str) -> list[str]:
    items, depth, start = [], 0, 0
    for index, char in enumerate(text):
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif char == "," and depth == 0:
            items.append(text[start:index].strip())
            start = index + 1
    items.append(text[start:].strip())
    return items


def _clean_latex(text: str) -> str:
    """Case-preserving LaTeX cleanup: math delimiters, spacing, degree marks, text wrappers."""
    for old, new in _UNICODE_REPLACEMENTS.items():
        text = text.replace(old, new)
    text = _unwrap_commands(text)
    text = _DROPPED_LATEX.sub("", text)
    text = re.sub(r"\\[dt]frac(?![a-z])", r"\\frac", text)
    text = text.replace("\\%", "%")
    # \{1,2\} is how LaTeX writes the set {1,2}.
    text = text.replace("\\{", "{").replace("\\}", "}")
    return text.strip()


def _unwrap_commands(text: str) -> str:
    """Replace every ``\\text{X}``-like command by X (innermost handled by repeating)."""
    while match := _UNWRAP_COMMAND.search(text):
        open_index = match.end() - 1
        close_index = _matching_brace(text, open_index)
        if close_index is None:
            return text[: match.start()] + text[match.end() :]
        text = text[: match.start()] + text[open_index + 1 : close_index] + text[close_index + 1 :]
    return text


def _drop_trailing_units(text: str) -> str:
    while (match := _TRAILING_UNIT.search(text)) and re.search(r"\d", text[: match.start()]):
        text = text[: match.start()].rstrip()
    if match := _NUMBER_WITH_LETTER_UNIT.match(text):
        text = match.group(1)
    return text


def _matching_brace(text: str, open_index: int) -> int | None:
    """Index of the ``}`` closing the ``{`` at ``open_index``; escaped ``\\{ \\}`` are skipped."""
    depth = 0
    index = open_index
    while index < len(text):
        char = text[index]
        if char == "\\":
            index += 2
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return index
        index += 1
    return None


@lru_cache(maxsize=1)
def _sympy() -> ModuleType | None:
    try:
        import sympy
    except ImportError:
        return None
    return sympy


def _sympy_equal(given_norm: str, truth_norm: str) -> bool:
    if len(given_norm) > SYMPY_MAX_CHARS or len(truth_norm) > SYMPY_MAX_CHARS:
        return False
    return _cached_sympy_equal(given_norm, truth_norm)


@lru_cache(maxsize=65536)
def _cached_sympy_equal(given_norm: str, truth_norm: str) -> bool:
    """Symbolic equality; cached because a GRPO group repeats its ground truth and many answers."""
    sympy = _sympy()
    if sympy is None:
        return False
    given_code, truth_code = _to_sympy_code(given_norm), _to_sympy_code(truth_norm)
    if given_code is None or truth_code is None:
        return False
    try:
        given_expr, truth_expr = _parse_safely(sympy, given_code), _parse_safely(sympy, truth_code)
        if given_expr is None or truth_expr is None:
            return False
        if sympy.expand(given_expr - truth_expr) == 0:
            return True
        if given_expr.is_Integer or truth_expr.is_Integer:
            return False  # integers are exact: 10^4+1 is not 10000 within a tolerance
        return _agree_at_sample_points(sympy, given_expr, truth_expr)
    except Exception:  # noqa: BLE001 - sympy raises many exception types on odd input
        return False


def _agree_at_sample_points(sympy: ModuleType, given_expr: Any, truth_expr: Any) -> bool:
    """Numeric equality at fixed irrational-looking points (constants: just their values).

    Catches identities that expand() does not (trigonometric, rational functions) without
    sympy.simplify, which costs tens of milliseconds per call and has no time bound.
    """
    symbols = sorted(given_expr.free_symbols | truth_expr.free_symbols, key=str)
    for point_index in range(len(_SAMPLE_VALUES) if symbols else 1):
        values = {
            symbol: _SAMPLE_VALUES[(point_index + offset) % len(_SAMPLE_VALUES)]
            for offset, symbol in enumerate(symbols)
        }
        given_value = complex(given_expr.evalf(15, subs=values))
        truth_value = complex(truth_expr.evalf(15, subs=values))
        if not all(map(cmath.isfinite, (given_value, truth_value))):
            return False
        if not cmath.isclose(given_value, truth_value, rel_tol=RELATIVE_TOLERANCE, abs_tol=0.0):
            return False
    return True


def _to_sympy_code(text: str) -> str | None:
    """Python/sympy source for a short LaTeX-ish expression, or None when it is not one we trust."""
    code = _latex_fractions_and_roots(text)
    if code is None:
        return None
    for latex, replacement in _LATEX_TO_SYMPY.items():
        code = re.sub(re.escape(latex) + r"(?![a-z])", replacement, code)
    code = code.replace("{", "(").replace("}", ")")
    if "\\" in code or not _SYMPY_SAFE_CHARS.fullmatch(code):
        return None
    # Stray dots would allow attribute access; "()" parses to a Tuple, which sympy warns about in Mul.
    if re.search(r"(?<!\d)\.|\.(?!\d)", code) or "**" in code or re.search(r"\(\s*\)", code):
        return None
    for name in re.findall(r"[a-z]+", code):
        if len(name) > 1 and name not in _SYMPY_FUNCTIONS:
            return None
    if re.search(r"\d\s*e\s*[-+]?\d", code):  # 1e5 here would parse as 1*e*5
        return None
    return code


def _latex_fractions_and_roots(text: str) -> str | None:
    r"""Rewrite \frac{a}{b} -> ((a)/(b)) and \sqrt{a} -> sqrt(a), \sqrt[n]{a} -> ((a)^(1/(n)))."""
    text = _expand_short_fractions(text)
    # A leading whole number right before a fraction is a mixed number: 2\frac{1}{2} = 2 + 1/2.
    text = re.sub(r"^(\d+)\s*\\frac", r"\1+\\frac", text)
    while match := re.search(r"\\(frac|sqrt)\s*", text):
        index = match.end()
        if match.group(1) == "frac":
            numerator, index = _brace_argument(text, index)
            denominator, index = _brace_argument(text, index) if numerator is not None else (None, index)
            if numerator is None or denominator is None:
                return None
            replacement = f"(({numerator})/({denominator}))"
        else:
            degree = None
            if text[index : index + 1] == "[":
                close = text.find("]", index)
                if close == -1:
                    return None
                degree, index = text[index + 1 : close], close + 1
            radicand, index = _brace_argument(text, index)
            if radicand is None:
                radicand_match = re.match(r"\s*(\w)", text[index:])
                if radicand_match is None:
                    return None
                radicand, index = radicand_match.group(1), index + radicand_match.end()
            replacement = f"sqrt({radicand})" if degree is None else f"(({radicand})^(1/({degree})))"
        text = text[: match.start()] + replacement + text[index:]
    return text


def _brace_argument(text: str, index: int) -> tuple[str | None, int]:
    while index < len(text) and text[index] == " ":
        index += 1
    if index >= len(text) or text[index] != "{":
        return None, index
    close = _matching_brace(text, index)
    if close is None:
        return None, index
    return text[index + 1 : close], close + 1


def _parse_safely(sympy: ModuleType, code: str) -> Any:
    """Parse ``code`` (already restricted to a safe alphabet); None when a power could blow up.

    Parsed unevaluated first so that the powers can be checked before anything is computed.
    """
    from sympy.parsing.sympy_parser import (
        convert_xor,
        implicit_application,
        implicit_multiplication,
        parse_expr,
        standard_transformations,
    )

    transformations = standard_transformations + (implicit_multiplication, implicit_application, convert_xor)
    names = {letter: sympy.Symbol(letter) for letter in "abcdefghijklmnopqrstuvwxyz"}
    names.update(sqrt=sympy.sqrt, pi=sympy.pi, sin=sympy.sin, cos=sympy.cos, tan=sympy.tan,
                 log=sympy.log, ln=sympy.log, exp=sympy.exp)
    # parse_expr runs eval(); the code alphabet is already whitelisted and no builtins are reachable.
    global_names = {"__builtins__": {}, **{name: getattr(sympy, name) for name in _SYMPY_PARSER_NAMES}}
    unevaluated = parse_expr(code, names, transformations, global_names, evaluate=False)
    if not isinstance(unevaluated, sympy.Expr) or not _powers_are_bounded(sympy, unevaluated):
        return None
    return unevaluated.doit()


def _powers_are_bounded(sympy: ModuleType, expression: Any) -> bool:
    """No constant exponent above 100 in magnitude, no constant power of a constant power.

    Both rules keep evaluation cheap: 9^9^9 or ((2^99)^99)^99 would compute astronomically large
    integers. Reciprocals (x^-1, how a/b is represented) and square roots are not counted.
    """
    def is_counted_constant_power(node: Any) -> bool:
        return (
            isinstance(node, sympy.Pow)
            and not node.exp.free_symbols
            and node.exp not in (sympy.Integer(-1), sympy.Rational(1, 2), sympy.Rational(-1, 2))
        )

    for power in expression.atoms(sympy.Pow):
        if not is_counted_constant_power(power):
            continue
        inner_nodes = [*sympy.preorder_traversal(power.exp), *sympy.preorder_traversal(power.base)]
        if any(node is not power and is_counted_constant_power(node) for node in inner_nodes):
            return False
        if abs(complex(power.exp.evalf())) > _MAX_CONSTANT_EXPONENT:
            return False
    return True

