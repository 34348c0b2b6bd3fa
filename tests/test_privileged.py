"""Context building for OPCoD: templates, cognizance gating, anchoring (leak stripping)."""

from __future__ import annotations

import pytest

from mopdx.codistill.privileged import Templates, anchor_feedback, answer_leaks, feedback_prompt, gate, strip_answer, teacher_context
from mopdx.data import Example
from mopdx.lab.domains import get_domain

T = Templates("{prompt}{solution}{feedback}\n\nCorrectly solve the original question.", "\nA solution: {solution}", "\nFeedback: {feedback}", "Hint for: {prompt}")


def test_teacher_context_follows_the_template_and_drops_empty_parts() -> None:
    q = "add: 17 + 25"
    assert teacher_context(q, "42", "7+5=12", T) == "add: 17 + 25\nA solution: 42\nFeedback: 7+5=12\n\nCorrectly solve the original question."
    assert teacher_context(q, None, "7+5=12", T) == "add: 17 + 25\nFeedback: 7+5=12\n\nCorrectly solve the original question."
    assert teacher_context(q, None, None, T) == "add: 17 + 25\n\nCorrectly solve the original question."
    assert feedback_prompt(q, T) == "Hint for: add: 17 + 25"


def test_template_without_placeholder_is_rejected() -> None:
    with pytest.raises(ValueError, match="solution_template"):
        Templates(solution="no placeholder").check()


@pytest.mark.parametrize(
    ("correct", "min_pass", "expected"),
    [([True, False, False, False], 0.5, False), ([True, True, False, False], 0.5, True), ([True, False, False, False], 0.0, True),
     ([False, False], 0.0, False), ([], 0.5, False)],
)
def test_cognizance_gate(correct: list[bool], min_pass: float, expected: bool) -> None:
    assert gate(correct, min_pass) is expected


def test_generic_leak_check_is_whole_word() -> None:
    assert answer_leaks("so it is 42 then", "42")
    assert not answer_leaks("carry 142", "42")  # part of another number is not the answer
    assert strip_answer("it is 42, not 142", "42") == "it is ?, not 142"


def test_anchoring_strips_the_answer_and_reports_the_leak() -> None:
    add = get_domain("add")
    ex = Example("add", "add: 3 + 4", "7")
    steps = add.worked_steps(ex)
    assert steps == "3+4=7"
    text, leaked = anchor_feedback(steps, ex.answer, add.leaks)
    assert leaked and text == "3+4=?"
    clean, leaked = anchor_feedback("7+5=12 1+2+1=4", "42", add.leaks)
    assert clean == "7+5=12 1+2+1=4" and not leaked


def test_task_specific_leak_that_masking_cannot_fix_drops_the_feedback() -> None:
    rev = get_domain("reverse")
    # the answer spelled with other separators: masking the exact string does not remove it
    text, leaked = anchor_feedback("f then a then c", "f a c", rev.leaks)
    assert leaked and text == ""
    assert not rev.leaks("f .. c", "f a c")
    assert get_domain("sort").leaks("1, 2, 5, 8", "1258") and not get_domain("sort").leaks("1 .. 8", "1258")
