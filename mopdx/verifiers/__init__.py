"""Verifiers: the framework's table of graders, chosen per domain (``data.verifiers``)."""

from mopdx.verifiers.base import Verifier, answer_leaks, extracted, normalise
from mopdx.verifiers.grading import Grades, grade, grade_mixed
from mopdx.verifiers.simple import EXACT_MATCH, ExactMatch
from mopdx.verifiers.table import BUILTIN, build, configure, grader, verifier_for

__all__ = [
    "BUILTIN", "EXACT_MATCH", "ExactMatch", "Grades", "Verifier", "answer_leaks", "build", "configure", "extracted", "grade",
    "grade_mixed", "grader", "normalise", "verifier_for",
]
