"""The verifiers that need no library: ``exact``, ``numeric``, ``choice`` and ``regex``.

Each documents what it reads from a completion (``extract``) because that,
not the comparison, is where grading real chains of thought goes wrong.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

from mopdx.errors import ConfigError
from mopdx.verifiers.base import answer_leaks, normalise
from mopdx.verifiers.extract import NUMBER, boxed, final_answer, last_number, plain_number


class ExactMatch:
    """``exact``: the whole completion, whitespace-normalised, equals the reference (the lab's short answers)."""

    def extract(self, completion: str) -> str | None:
        return normalise(completion)

    def verify(self, answer: str, completion: str) -> bool:
        return normalise(completion) == normalise(answer)

    def leaks(self, feedback: str, answer: str) -> bool:
        return answer_leaks(feedback, answer)


EXACT_MATCH = ExactMatch()


def to_number(text: str) -> float | None:
    """``text`` as a number (``1,234``, ``-3.5``, ``3/4``, ``$12``, ``40%`` as 40); ``None`` if it is not one."""
    text = plain_number(text).rstrip("%").strip()
    m = NUMBER.fullmatch(text)
    if m is None:
        return None
    try:
        return float(Fraction(text.replace(",", "")))
    except (ValueError, ZeroDivisionError):
        return None


class NumericVerifier:
    """``numeric``: the anchored final answer (else the last number) within a tolerance of the reference.

    ``rel_tol`` / ``abs_tol`` as in ``math.isclose``; the reference may be a
    worked solution ending in ``#### 42``."""

    def __init__(self, rel_tol: float = 1e-6, abs_tol: float = 1e-9) -> None:
        if not (rel_tol >= 0 and abs_tol >= 0):
            raise ConfigError(f"verifier 'numeric': rel_tol={rel_tol}, abs_tol={abs_tol}; both must be >= 0")
        self.rel_tol, self.abs_tol = float(rel_tol), float(abs_tol)

    def extract(self, completion: str) -> str | None:
        found = final_answer(completion)
        if found is not None and to_number(found) is None:
            found = last_number(found)  # "42 apples" -> 42
        found = found if found is not None else last_number(completion)
        return None if found is None else plain_number(found)

    def verify(self, answer: str, completion: str) -> bool:
        found = self.extract(completion)
        gold = to_number(self.extract(answer) or "")
        pred = None if found is None else to_number(found)
        return gold is not None and pred is not None and math.isclose(pred, gold, rel_tol=self.rel_tol, abs_tol=self.abs_tol)

    def leaks(self, feedback: str, answer: str) -> bool:
        gold = to_number(self.extract(answer) or "")
        return gold is not None and any(to_number(n) == gold for n in NUMBER.findall(feedback))


class ChoiceVerifier:
    """``choice``: the option letter a completion commits to, among ``letters`` (A-J).

    Read, strongest first (last occurrence wins within a form):
    ``\\boxed{B}``; "the answer is (B)" / "Answer: b" / "correct option: B"
    (lower case accepted only after such an anchor); a parenthesised ``(B)``;
    a line that is only the letter (``B``, ``B.``, ``B)``, ``**B**``).
    A capital inside a word ("Because", "TB") is never an option."""

    def __init__(self, letters: str = "ABCDEFGHIJ") -> None:
        letters = "".join(str(letters).split()).upper()
        if not letters or not letters.isalpha() or len(set(letters)) != len(letters):
            raise ConfigError(f"verifier 'choice': letters={letters!r} must be distinct letters, e.g. ABCD")
        self.letters = letters
        cls = f"[{letters}{letters.lower()}]"
        self._anchored = re.compile(
            rf"(?:answer|option|choice)(?:\s+is)?\s*[:=]?\s*(?:option\s+)?[(\[*]*({cls})(?![\w])", re.IGNORECASE
        )
        self._paren = re.compile(rf"\(([{letters}])\)")
        self._line = re.compile(rf"^[\s*>#-]*\(?([{letters}])[).:]?[\s*]*$", re.MULTILINE)

    def letter(self, text: str) -> str | None:
        """The option letter of ``text``: its last committed-to option, upper case."""
        box = boxed(text)
        if box is not None:
            m = re.fullmatch(rf"\s*(?:\\text\{{)?\(?([{self.letters}{self.letters.lower()}])\)?\}}?\s*", box)
            if m:
                return m.group(1).upper()
        for pattern in (self._anchored, self._paren, self._line):
            found = pattern.findall(text)
            if found:
                return found[-1].upper()
        return None

    def extract(self, completion: str) -> str | None:
        return self.letter(completion)

    def gold(self, answer: str) -> str | None:
        """The reference's letter: ``B``, ``(B)``, ``B. aspirin`` or ``Answer: B``."""
        m = re.match(rf"\s*\(?([{self.letters}{self.letters.lower()}])(?:[).:\s]|$)", answer)
        return m.group(1).upper() if m else self.letter(answer)

    def verify(self, answer: str, completion: str) -> bool:
        gold = self.gold(answer)
        return gold is not None and self.letter(completion) == gold

    def check_answer(self, answer: str) -> str | None:
        return None if self.gold(answer) else f"a choice answer must be one of the letters {self.letters}, got {answer[:40]!r}"

    def leaks(self, feedback: str, answer: str) -> bool:
        gold = self.gold(answer)
        return gold is not None and self.letter(feedback) == gold


class RegexVerifier:
    """``regex``: the last match's one group, whitespace-normalised, equals the reference.

    ``pattern`` must have exactly one capturing group, e.g. ``Result:\\s*(\\S+)``."""

    def __init__(self, pattern: str = "", ignore_case: bool = False) -> None:
        try:
            self.pattern = re.compile(pattern, re.IGNORECASE if ignore_case else 0)
        except re.error as exc:
            raise ConfigError(f"verifier 'regex': pattern {pattern!r} does not compile ({exc})") from None
        if not pattern or self.pattern.groups != 1:
            raise ConfigError(f"verifier 'regex': pattern {pattern!r} must have exactly one capturing group (it has {self.pattern.groups})")
        self.ignore_case = bool(ignore_case)

    def extract(self, completion: str) -> str | None:
        found = [m.group(1) for m in self.pattern.finditer(completion)]
        return normalise(found[-1]) if found else None

    def verify(self, answer: str, completion: str) -> bool:
        found = self.extract(completion)
        if found is None:
            return False
        gold = normalise(answer)
        return found.lower() == gold.lower() if self.ignore_case else found == gold

    def leaks(self, feedback: str, answer: str) -> bool:
        return answer_leaks(feedback, answer)
