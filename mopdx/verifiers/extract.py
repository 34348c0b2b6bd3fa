"""Final-answer extraction: where in a chain of thought a model states its answer.

Why one module: math, numeric and choice grading all first have to find the
answer in free text, and the rules must be the same for every verifier and
for ``python -m mopdx verify``, which shows the user what was read.

The anchors, strongest first (the *last* occurrence of an anchor wins, since
models revise themselves):

1. ``\\boxed{...}`` (or ``\\fbox{...}``), braces balanced;
2. ``#### <answer>`` (GSM8K's convention), to the end of its line;
3. "the answer is <answer>" / "final answer: <answer>" / "Answer: <answer>",
   case-insensitive, to the end of its sentence or line.

Without an anchor, ``last_number`` is the usual fallback of numeric grading.
"""

from __future__ import annotations

import re

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_HASHES = re.compile(r"####\s*([^\n]*)")
_ANSWER_IS = re.compile(
    r"(?:the\s+)?(?:final\s+|correct\s+)?answer\s*(?:is|:|=)\s*:?\s*([^\n]*)",
    re.IGNORECASE,
)
# a number as people write it: sign, thousands separators, decimals, a fraction
NUMBER = re.compile(r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?(?![\w])")


def boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` with balanced braces (``None``: none, or unclosed)."""
    found = None
    for m in _BOXED.finditer(text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            found = text[m.end() : i - 1].strip()
    return found


def _tidy(answer: str) -> str:
    """An anchored answer without the sentence around it: trailing full stop, markdown bold, ``$`` pairs."""
    answer = answer.strip()
    answer = re.split(r"\.\s", answer, maxsplit=1)[0].strip()  # "42. Next ..." -> "42"; 3.5 has no space after its point
    answer = answer.rstrip(".").strip().strip("*").strip()
    if len(answer) >= 2 and answer.startswith("$") and answer.endswith("$"):
        answer = answer.strip("$").strip()
    return answer.rstrip(".").strip()


def after_hashes(text: str) -> str | None:
    """The answer after the last ``####`` (``None``: no ``####`` with text after it)."""
    found = [m.group(1) for m in _HASHES.finditer(text) if m.group(1).strip()]
    return _tidy(found[-1]) if found else None


def answer_is(text: str) -> str | None:
    """The answer of the last "the answer is ..." / "Answer: ..." phrase."""
    found = [m.group(1) for m in _ANSWER_IS.finditer(text) if m.group(1).strip()]
    return _tidy(found[-1]) if found else None


def final_answer(text: str) -> str | None:
    """The anchored final answer of ``text``: boxed, else ``####``, else "the answer is"; ``None`` without an anchor."""
    for find in (boxed, after_hashes, answer_is):
        found = find(text)
        if found:
            return found
    return None


def last_number(text: str) -> str | None:
    """The last number written in ``text`` (``142`` is one number, never ``42``)."""
    found = NUMBER.findall(text)
    return found[-1] if found else None


def plain_number(text: str) -> str:
    """``text`` without what numbers carry in prose: thousands separators, a currency sign, a trailing unit-less full stop."""
    text = text.strip().rstrip(".").strip()
    text = re.sub(r"^[\\]?[$€£]\s*", "", text)
    if re.fullmatch(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?", text):
        text = text.replace(",", "")
    return text
