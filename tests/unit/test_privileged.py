"""Context building for OPCoD: templates, cognizance gating, anchoring (leak stripping)."""

from __future__ import annotations

import pytest

from mopdx.codistill.privileged import Templates, anchor_feedback, answer_leaks, feedback_prompt, gate, strip_answer, teacher_context
from mopdx.config import configs_dir
from mopdx.data import Example
from mopdx_lab.domains import get_domain

OPCOD_V1 = configs_dir() / "experiment" / "opcod_v1.yaml"  # lab v1's scenario: the hand-built examples below are lab v1 `add`

T = Templates("{prompt}{solution}{feedback}\n\nCorrectly solve the original question.", "\nA solution: {solution}", "\nFeedback: {feedback}", "Hint for: {prompt}")


def test_teacher_context_follows_the_template_and_drops_empty_parts() -> None:
    q = "add: 17 + 25"
    assert teacher_context(q, "42", "7+5=12", T) == "add: 17 + 25\nA solution: 42\nFeedback: 7+5=12\n\nCorrectly solve the original question."
    assert teacher_context(q, None, "7+5=12", T) == "add: 17 + 25\nFeedback: 7+5=12\n\nCorrectly solve the original question."
    assert teacher_context(q, None, None, T) == "add: 17 + 25\n\nCorrectly solve the original question."
    assert feedback_prompt(q, T) == "Hint for: add: 17 + 25"
    tutor = Templates(T.teacher, T.solution, T.feedback, "Solved: {solution}\nHint for: {prompt}")  # a hint written from a solution
    assert feedback_prompt(q, tutor, "42") == "Solved: 42\nHint for: add: 17 + 25" and feedback_prompt(q, tutor) == "Solved: \nHint for: add: 17 + 25"
    assert feedback_prompt(q, T, "42") == "Hint for: add: 17 + 25"  # a template without {solution} ignores it


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


def test_route_feedback_peer_self_and_shuffled() -> None:
    from mopdx.codistill.privileged import route_feedback

    mine, theirs = ["m0", None, "m2", "m3"], ["t0", "t1", None, "t3"]
    assert route_feedback("peer", mine, theirs, seed=0) == theirs
    assert route_feedback("self", mine, theirs, seed=0) == mine
    for seed in range(20):
        shuffled = route_feedback("shuffled", mine, theirs, seed)
        assert sorted(map(str, shuffled)) == sorted(map(str, theirs))  # the same feedback, rate and style kept
        assert all(shuffled[p] != theirs[p] for p in range(4) if theirs[p] is not None)  # none stays on its own prompt
        assert shuffled == route_feedback("shuffled", mine, theirs, seed)  # seeded
    assert len({tuple(map(str, route_feedback("shuffled", mine, theirs, s))) for s in range(20)}) > 1
    with pytest.raises(ValueError, match="feedback source"):
        route_feedback("other", mine, theirs, 0)


def _teacher_reads(overrides: list[str]) -> list[str]:
    """What peer A's teacher reads on three hand-built prompts, through the strategy hooks in the
    loop's order: B's and A's feedback gated on their own verdicts, anchored, routed, then the context."""
    from mopdx.codistill.privileged import route_feedback
    from mopdx.config import load_config
    from mopdx.verifiers import verifier_for
    from mopdx_strategies.opcod import OPCoDStrategy

    cfg = load_config("opcod", [OPCOD_V1], ["strategy.use_solution=true", *overrides])
    s = cfg.codistill
    s.teacher_template, s.solution_template, s.feedback_template, s.feedback_prompt_template = T.teacher, T.solution, T.feedback, T.feedback_prompt
    strategy = OPCoDStrategy(cfg, ["add"])
    prompts, answers = ["add: 1 + 2", "add: 3 + 4", "add: 5 + 5"], ["3", "7", "10"]
    own_solution = ["3", None, "10"]  # A's first correct rollout per prompt
    verdicts = {"A": [[True, True], [False, False], [True, False]], "B": [[True, True], [True, True], [False, False]]}
    raw = {"A": ["mine, the sum is 3", "mine 2", "mine 3"], "B": ["ones add up to 3", "carry none, it is 7", "theirs 3"]}

    def feedback_of(giver: str) -> list[str | None]:
        out: list[str | None] = []
        for p in range(3):
            if not strategy.uses_feedback or not strategy.reads_context or not strategy.gives_feedback(verdicts[giver][p]):
                out.append(None)
                continue
            text, _ = strategy.clean_feedback(raw[giver][p], answers[p], verifier_for("add"))
            out.append(text or None)
        return out

    routed = route_feedback(cfg.codistill.feedback_source, feedback_of("A"), feedback_of("B"), seed=1)
    return [strategy.teacher_context(prompts[p], own_solution[p], routed[p]) for p in range(3)]


END = "\n\nCorrectly solve the original question."


@pytest.mark.parametrize(("control", "overrides", "expected"), [
    ("opcod", [], ["add: 1 + 2\nA solution: 3\nFeedback: ones add up to ?" + END, "add: 3 + 4\nFeedback: carry none, it is ?" + END, "add: 5 + 5\nA solution: 10" + END]),
    ("feedback off", ["strategy.feedback=false"], ["add: 1 + 2\nA solution: 3" + END, "add: 3 + 4" + END, "add: 5 + 5\nA solution: 10" + END]),
    ("no own solution", ["strategy.use_solution=false"], ["add: 1 + 2\nFeedback: ones add up to ?" + END, "add: 3 + 4\nFeedback: carry none, it is ?" + END, "add: 5 + 5" + END]),
    ("self feedback", ["codistill.feedback_source=self"], ["add: 1 + 2\nA solution: 3\nFeedback: mine, the sum is ?" + END, "add: 3 + 4" + END, "add: 5 + 5\nA solution: 10\nFeedback: mine 3" + END]),
    ("gating off", ["strategy.gating=false"], ["add: 1 + 2\nA solution: 3\nFeedback: ones add up to ?" + END, "add: 3 + 4\nFeedback: carry none, it is ?" + END, "add: 5 + 5\nA solution: 10\nFeedback: theirs 3" + END]),
    ("anchoring off", ["strategy.anchoring=false"], ["add: 1 + 2\nA solution: 3\nFeedback: ones add up to 3" + END, "add: 3 + 4\nFeedback: carry none, it is 7" + END, "add: 5 + 5\nA solution: 10" + END]),
    ("one-way MOPD from the other peer", ["codistill.teacher=peer"], ["add: 1 + 2", "add: 3 + 4", "add: 5 + 5"]),
])
def test_each_control_gives_the_teacher_exactly_this_context(control: str, overrides: list[str], expected: list[str]) -> None:
    assert _teacher_reads(overrides) == expected, control


def test_the_leak_rate_is_measured_with_anchoring_off_too() -> None:
    """Anchoring off passes a leaking hint on as written, and still counts it as a leak: the
    leak rate is what that control is read by (it used to report 0 whatever the hint said)."""
    from mopdx.config import load_config
    from mopdx.verifiers import verifier_for
    from mopdx_strategies.opcod import OPCoDStrategy

    add = verifier_for("add")
    for anchoring, leaking in ((True, ("ones add up to ?", True)), (False, ("ones add up to 3", True))):
        strategy = OPCoDStrategy(load_config("opcod", [OPCOD_V1], [f"strategy.anchoring={str(anchoring).lower()}"]), ["add"])
        assert strategy.clean_feedback("ones add up to 3", "3", add) == leaking
        assert strategy.clean_feedback("carry one", "3", add) == ("carry one", False)


def test_shuffled_feedback_control_moves_the_other_peers_feedback_to_other_prompts() -> None:
    """B gave feedback on prompts 0 and 1 (gated off on 2); shuffled, each lands on another prompt."""
    reads = _teacher_reads(["codistill.feedback_source=shuffled"])
    given = {0: "ones add up to ?", 1: "carry none, it is ?"}
    moved = {p: r.split("Feedback: ")[1].removesuffix(END) for p, r in enumerate(reads) if "Feedback: " in r}
    assert sorted(moved.values()) == sorted(given.values())
    assert all(given.get(p) != fb for p, fb in moved.items())
    assert [r.split("\nFeedback: ")[0].removesuffix(END) for r in reads] == ["add: 1 + 2\nA solution: 3", "add: 3 + 4", "add: 5 + 5\nA solution: 10"]
