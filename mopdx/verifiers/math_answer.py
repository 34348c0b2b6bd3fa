"""The ``math`` verifier: the final answer found by ``extract``, judged equal to the reference by math-verify.

Why math-verify (Hugging Face's library) and not a parser of our own: ``1/2``,
``0.5``, ``\\frac{1}{2}`` and ``\\dfrac12`` are one answer, and so are
``x=2`` and ``2`` or ``\\{1,2\\}`` and ``\\{2,1\\}``; getting LaTeX, sets,
intervals and units right is that library's whole job.

Extraction (``mopdx.verifiers.extract``): ``\\boxed{}``, else ``####``, else
"the answer is"; with none of them, the last number of the completion
(``fallback="none"``: no anchor is wrong).  A reference that is itself a
solution (GSM8K's CoT ending in ``#### 42``) is reduced by the same rules,
so ``data.fields.answer`` may point at the full reference solution.
"""

from __future__ import annotations

import re
import threading
from typing import Any

from mopdx.errors import ConfigError
from mopdx.verifiers.base import answer_leaks
from mopdx.verifiers.extract import final_answer, last_number, plain_number

LEADING_NUMBER = re.compile(r"\s*(-?[\d.,/]+)\s+[A-Za-z]")  # a number followed by prose
INSTALL = 'pip install "mopdx[math]"  (or: pip install math-verify)'


def require_math_verify() -> Any:
    """The ``math_verify`` module, or one line saying which extra installs it."""
    try:
        import math_verify
    except ImportError:
        raise ConfigError(f"verifier 'math' needs the math-verify package: {INSTALL}") from None
    return math_verify


class MathVerifier:
    """Final-answer extraction + math-verify equivalence (see the module docstring)."""

    def __init__(self, fallback: str = "last_number", float_rounding: int = 6) -> None:
        if fallback not in ("last_number", "none"):
            raise ConfigError(f"verifier 'math': fallback={fallback!r}; allowed: last_number, none")
        self.fallback = fallback
        self.float_rounding = int(float_rounding)
        self._mv = require_math_verify()

    def extract(self, completion: str) -> str | None:
        found = final_answer(completion)
        if found is not None:
            lead = LEADING_NUMBER.match(found)  # "42 because 6*7" -> 42; LaTeX is left to math-verify
            if lead and "\\" not in found:
                found = lead.group(1)
        elif self.fallback == "last_number":
            found = last_number(completion)
        return None if found is None else plain_number(found)

    def gold(self, answer: str) -> str:
        """The reference's final answer: a bare answer as is, a worked solution by its anchor."""
        return plain_number(final_answer(answer) or answer)

    @staticmethod
    def _timeout() -> int | None:
        """math-verify's timeouts use SIGALRM, which only the main thread may set: none elsewhere."""
        return 5 if threading.current_thread() is threading.main_thread() else None

    def _parse(self, text: str) -> list[Any]:
        return self._mv.parse(f"\\boxed{{{text}}}", parsing_timeout=self._timeout())

    def verify(self, answer: str, completion: str) -> bool:
        found = self.extract(completion)
        if found is None:
            return False
        gold, pred = self._parse(self.gold(answer)), self._parse(found)
        if not gold or not pred:
            return False
        return bool(self._mv.verify(gold, pred, float_rounding=self.float_rounding, timeout_seconds=self._timeout()))

    def leaks(self, feedback: str, answer: str) -> bool:
        return answer_leaks(feedback, self.gold(answer))
