"""Grading that never fails a run: a verifier that raises fails that sample, counted and logged.

Why: one malformed completion (or a verifier bug on an odd input) must not
end a day of training.  Every reward, accuracy and OPCoD gate goes through
``grade``; samples whose verifier raised count as wrong and are tallied per
domain in ``UNGRADED``, which training logs (``reward/ungraded``) and
evaluation records next to accuracy (``ungraded`` in ``eval.jsonl``).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from mopdx.verifiers.base import Verifier, verify_many
from mopdx.verifiers.table import grader

log = logging.getLogger("mopdx")

UNGRADED: Counter[str] = Counter()  # domain -> samples whose verifier raised, this process


@dataclass(frozen=True)
class Grades:
    correct: list[bool]
    ungraded: int  # how many of them could not be graded (counted as wrong)


def _one(verifier: Verifier, answer: str, completion: str) -> bool | str:
    """The verdict, or (the verifier raised) the error's one-line description."""
    try:
        return bool(verifier.verify(answer, completion))
    except Exception as exc:  # noqa: BLE001 -- any verifier failure is a failed sample
        return f"{type(exc).__name__}: {exc}"


def grade(domain: str, answers: Sequence[str], completions: Sequence[str], verifier: Verifier | None = None) -> Grades:
    """Each completion of ``domain`` against its answer; a raising verifier fails only its samples."""
    verifier = verifier or grader(domain)
    try:
        return Grades(verify_many(verifier, answers, completions), 0)
    except Exception:  # noqa: BLE001 -- find which samples raise, one by one
        pass
    results = [_one(verifier, a, c) for a, c in zip(answers, completions, strict=True)]
    errors = [r for r in results if isinstance(r, str)]
    if errors:
        UNGRADED[domain] += len(errors)
        log.warning("verifier of domain %r raised on %d of %d samples (%s); they count as wrong", domain, len(errors), len(results), errors[-1])
    return Grades([r is True for r in results], len(errors))


def grade_mixed(domains: Sequence[str], answers: Sequence[str], completions: Sequence[str], table: Mapping[str, Verifier] | None = None) -> Grades:
    """``grade`` over a batch of several domains, each domain's samples in one call, results in input order
    (``table``: the verifiers to use, default the process's ``grader``)."""
    out: list[bool] = [False] * len(domains)
    ungraded = 0
    for d in sorted(set(domains)):
        idx = [i for i, x in enumerate(domains) if x == d]
        g = grade(d, [answers[i] for i in idx], [completions[i] for i in idx], (table or {}).get(d))
        ungraded += g.ungraded
        for i, ok in zip(idx, g.correct):
            out[i] = ok
    return Grades(out, ungraded)
