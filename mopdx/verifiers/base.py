"""The grading contract every verifier speaks, and the text helpers they share.

Why a contract and not a function: one verifier serves four readers --
RL rewards, evaluation accuracy, OPCoD's gate (is this peer's solution
right?) and its anchoring (does this feedback give the answer away?) --
and ``python -m mopdx verify`` shows a user what a verifier *extracted*
from a completion, which is where real grading goes wrong.

Required: ``verify(answer, completion) -> bool`` and ``leaks(feedback, answer) -> bool``.
Optional (``mopdx.verifiers.grading`` uses them when present):

* ``extract(completion) -> str | None`` -- the final answer the verifier read
  (``None``: it found none, which grades as wrong);
* ``verify_batch(answers, completions) -> list[bool]`` -- grade many at once
  (the code verifier runs programs in parallel);
* ``check_answer(answer) -> str | None`` -- a reason a reference answer cannot
  be graded at all (a code task without tests), checked before any model loads.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Protocol, runtime_checkable


def normalise(text: str) -> str:
    """Collapse whitespace so verifiers ignore spacing differences."""
    return " ".join(text.split())


def answer_leaks(feedback: str, answer: str) -> bool:
    """Generic leak check: the normalised answer occurs as a whole word sequence."""
    ans = normalise(answer)
    if not ans:
        return False
    return re.search(rf"(?<!\w){re.escape(ans)}(?!\w)", normalise(feedback)) is not None


@runtime_checkable
class Verifier(Protocol):
    """Grades a completion against a reference answer (exactly: RL rewards and accuracy use it).

    ``leaks`` says whether a text gives the final answer away (OPCoD's anchoring);
    domains with structure (digits, letters) know better than a substring match."""

    def verify(self, answer: str, completion: str) -> bool: ...

    def leaks(self, feedback: str, answer: str) -> bool: ...


def extracted(verifier: Verifier, completion: str) -> str | None:
    """What ``verifier`` read as the final answer of ``completion`` (the whole text if it does not say)."""
    extract = getattr(verifier, "extract", None)
    return extract(completion) if extract is not None else completion


def verify_many(verifier: Verifier, answers: Sequence[str], completions: Sequence[str]) -> list[bool]:
    """``verifier``'s batch path when it has one, else one call per pair (exceptions propagate)."""
    batch = getattr(verifier, "verify_batch", None)
    if batch is not None:
        return [bool(v) for v in batch(list(answers), list(completions))]
    return [bool(verifier.verify(a, c)) for a, c in zip(answers, completions, strict=True)]
