"""Privileged contexts for self-distillation (OPCoD): templates, gating, anchoring.

In OPCoD a peer's *teacher* is the peer itself reading a privileged context
-- its own correct rollout, when it has one, plus the other peer's feedback --
while its *student* side reads the plain prompt.  This module holds the pure
text logic so it can be tested without models:

* :class:`Templates` -- the teacher-context and feedback-prompt templates
  (config strings with ``{prompt}``, ``{solution}``, ``{feedback}``).
* :func:`teacher_context` -- builds the teacher prompt; empty parts vanish.
* :func:`gate` -- *cognizance gating*: a peer may give feedback on a prompt
  only when its own rollouts on that prompt pass the verifier.
* :func:`anchor_feedback` -- *anchoring*: feedback that contains the final
  answer is stripped of it (the leak check is task-specific when the domain
  provides one, a whole-word match of the normalised answer otherwise).
* :func:`route_feedback` -- whose feedback a peer's teacher reads: the other
  peer's (OPCoD), its own (a control), or the other's shuffled across prompts
  (a control: feedback that is fluent but about another problem).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from mopdx.verifiers import answer_leaks, normalise

# The lab's peers are trained on these exact strings (mopdx_lab/opcod.py), and the
# OPCoD strategy config defaults to them; change both together.
TEACHER_TEMPLATE = "{prompt}{solution}{feedback}\n\nCorrectly solve the original question."
SOLUTION_TEMPLATE = "\nsolution: {solution}"
FEEDBACK_TEMPLATE = "\nfeedback: {feedback}"
FEEDBACK_PROMPT_TEMPLATE = "feedback {prompt}"
MASK = "?"
FEEDBACK_SOURCES = ("peer", "self", "shuffled")


@dataclass(frozen=True)
class Templates:
    """How the privileged context and the feedback request are written."""

    teacher: str = TEACHER_TEMPLATE
    solution: str = SOLUTION_TEMPLATE
    feedback: str = FEEDBACK_TEMPLATE
    feedback_prompt: str = FEEDBACK_PROMPT_TEMPLATE

    def check(self) -> None:
        """Raise ``ValueError`` naming the template that lacks its placeholder."""
        for name, text, need in (
            ("teacher_template", self.teacher, "{prompt}"),
            ("solution_template", self.solution, "{solution}"),
            ("feedback_template", self.feedback, "{feedback}"),
            ("feedback_prompt_template", self.feedback_prompt, "{prompt}"),
        ):
            if need not in text:
                raise ValueError(f"codistill.{name} must contain {need}: {text!r}")


PRIVILEGED_DEFAULTS = Templates()


def teacher_context(prompt: str, solution: str | None, feedback: str | None, templates: Templates) -> str:
    """The teacher-side prompt: the plain prompt plus whatever privileged parts exist."""
    sol = templates.solution.format(solution=solution) if solution else ""
    fb = templates.feedback.format(feedback=feedback) if feedback else ""
    return templates.teacher.format(prompt=prompt, solution=sol, feedback=fb)


def feedback_prompt(prompt: str, templates: Templates, solution: str | None = None) -> str:
    """What the peer is asked in order to produce feedback on ``prompt``.

    A template may also hold ``{solution}``: the giver's own passing rollout on the prompt
    (gating guarantees one, unless gating is off; then it is empty), so it writes the hint
    the way a tutor does, from a solution it has -- rather than from what its weights
    happen to produce for a hint request, which need not match what it answers."""
    return templates.feedback_prompt.format(prompt=prompt, solution=solution or "")


def gate(correct: Sequence[bool], min_pass: float) -> bool:
    """Cognizance gate: the peer has shown it knows the problem.

    True when at least ``min_pass`` of its rollouts on the prompt are correct
    (and at least one is): a lucky single sample out of many is not knowledge.
    """
    if not correct:
        return False
    passed = sum(bool(c) for c in correct)
    return passed > 0 and passed / len(correct) >= min_pass


def strip_answer(feedback: str, answer: str) -> str:
    """Replace every whole-word occurrence of the answer with ``?``."""
    ans = normalise(answer)
    return re.sub(rf"(?<!\w){re.escape(ans)}(?!\w)", MASK, normalise(feedback)) if ans else feedback


LeakCheck = Callable[[str, str], bool]


def anchor_feedback(feedback: str, answer: str, leaks: LeakCheck = answer_leaks) -> tuple[str, bool]:
    """Feedback with the final answer removed, and whether it leaked.

    ``leaks(feedback, answer)`` is the task-specific check (lab domains
    provide one); what it flags is removed by masking the answer, and if the
    masked text still leaks (e.g. the answer spelled differently) the whole
    feedback is dropped rather than passed on.
    """
    if not leaks(feedback, answer):
        return feedback, False
    masked = strip_answer(feedback, answer)
    return (masked if not leaks(masked, answer) else ""), True


def route_feedback(source: str, mine: Sequence[str | None], theirs: Sequence[str | None], seed: int) -> list[str | None]:
    """The feedback each prompt's teacher context gets, by ``source``.

    ``"peer"``: the other peer's on the same prompt (OPCoD).  ``"self"``: the peer's own
    (gated on its own rollouts).  ``"shuffled"``: the other peer's, moved to another
    prompt by a seeded cyclic shift, so no prompt keeps its own (with two or more prompts)
    and the rate and style of feedback stay as they were; only its relevance is gone.
    """
    if source == "peer":
        return list(theirs)
    if source == "self":
        return list(mine)
    if source == "shuffled":
        n = len(theirs)
        if n < 2:
            return list(theirs)
        shift = random.Random(seed).randrange(1, n)
        return [theirs[(p + shift) % n] for p in range(n)]
    raise ValueError(f"unknown feedback source {source!r}; use one of {', '.join(FEEDBACK_SOURCES)}")
