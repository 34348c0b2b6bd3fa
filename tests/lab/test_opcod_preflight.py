"""OPCoD's pre-flight check: the measurement on constructed peers, and the verdict on hand-built rows."""

from __future__ import annotations

from mopdx.codistill.privileged import Templates
from mopdx.data import Example
from mopdx_lab.opcod_preflight import ContextGain, peer_gains, preflight_table, verdict

T = Templates("{prompt}{solution}{feedback}", "\n= {solution}", "\n# {feedback}", "hint {prompt}")


class FakePeer:
    """A peer whose verdicts are a rule of what it reads: right on the prompts it ``knows``,
    and, when ``uses_context``, right on any prompt whose context holds a solution or feedback."""

    def __init__(self, knows: set[str], uses_context: bool, feedback: str | dict[str, str] = "steps 4 then 2") -> None:
        self.knows, self.uses_context, self.text = knows, uses_context, feedback
        self.seen: list[str] = []

    def graded(self, prompts: list[str], examples: list[Example]) -> list[list[tuple[str, bool]]]:
        self.seen += prompts
        out = []
        for p, e in zip(prompts, examples):
            helped = self.uses_context and ("\n= " in p or ("\n# " in p and "wrong" not in p))  # misled by wrong feedback
            right = e.prompt in self.knows or helped
            out.append([(e.answer if right else "x", right)] * 2 + [("x", False)] * (0 if helped else 2))
        return out

    def feedback(self, examples: list[Example], templates: Templates, max_tokens: int, solutions: list[str | None]) -> list[str]:
        self.solutions = list(solutions)
        return [self.text if isinstance(self.text, str) else self.text[e.prompt] for e in examples]


EXAMPLES = [Example("sort", f"sort {i}", str(i)) for i in range(10)]


def test_contexts_are_measured_on_the_prompts_that_have_them_against_plain_on_the_same_prompts() -> None:
    weak = FakePeer(knows={"sort 0", "sort 1"}, uses_context=True)  # plain: half right on 2 of 10 prompts
    strong = FakePeer(knows={e.prompt for e in EXAMPLES[:8]}, uses_context=False)  # passes the gate on 8 prompts
    row = peer_gains(weak, strong, "A", "weak", EXAMPLES, T, gate_min_pass=0.5, feedback_tokens=8)
    assert row.plain == 0.1  # 2 prompts x 0.5
    assert row.n_solution == 2 and row.solution_plain == 0.5 and row.solution == 1.0  # its own correct rollout in context
    assert row.n_feedback == 8 and row.feedback_plain == 2 * 0.5 / 8 and row.feedback == 1.0  # gated: 8 prompts got feedback
    assert "sort 0\n= 0" in weak.seen and "sort 7\n# steps 4 then 2" in weak.seen and "sort 9\n# steps 4 then 2" not in weak.seen
    assert strong.solutions == [str(i) for i in range(8)]  # the giver's own passing rollout on each gated prompt
    ready, reasons = verdict([row])
    assert ready, reasons

    ignores = FakePeer(knows={"sort 0", "sort 1"}, uses_context=False)  # reads the context and gains nothing
    row = peer_gains(ignores, strong, "A", "weak", EXAMPLES, T, gate_min_pass=0.5, feedback_tokens=8)
    ready, reasons = verdict([row])
    assert not ready and any("own solution in context 0.50 <= plain 0.50" in r for r in reasons) and any("peer feedback in context 0.12 <= plain 0.12 on the same 8 prompts" in r for r in reasons) and any("with peer feedback 0.12 <= 0.7" in r for r in reasons)


def test_feedback_is_split_into_right_and_wrong_against_the_reference() -> None:
    """A reader that follows feedback: right feedback lifts it, wrong feedback sinks it; the
    split says which of the two the row's feedback figure is made of."""
    reader = FakePeer(knows={"sort 0", "sort 1", "sort 2", "sort 3"}, uses_context=True)
    texts = {e.prompt: ("wrong steps" if e.prompt in ("sort 1", "sort 2", "sort 3") else "good steps") for e in EXAMPLES}
    giver = FakePeer(knows={e.prompt for e in EXAMPLES[:8]}, uses_context=False, feedback=texts)
    row = peer_gains(reader, giver, "A", "weak", EXAMPLES, T, gate_min_pass=0.5, feedback_tokens=8, reference=lambda e: "good  steps")
    assert row.n_feedback == 8 and row.feedback_right == 5 / 8  # prompts 0, 4-7 right (whitespace aside); 1-3 wrong
    assert row.feedback_if_right == 1.0 and row.feedback_plain_if_right == 0.5 / 5  # only sort 0 is known plain (0.5)
    assert row.feedback_if_wrong == 0.5 and row.feedback_plain_if_wrong == 0.5  # misled: no better than plain on 1-3
    assert row.feedback == (5 * 1.0 + 3 * 0.5) / 8
    table = preflight_table({"rows": [row.__dict__], "ready": False, "reasons": ["x"], "samples": 4})
    assert "fb_right" in table.splitlines()[0] and "0.62" in table and "1.00 / 0.10" in table and "0.50 / 0.50" in table
    assert peer_gains(reader, giver, "A", "weak", EXAMPLES, T, gate_min_pass=0.5, feedback_tokens=8).feedback_right is None  # no reference, no split


def test_feedback_that_gives_the_answer_away_is_masked_before_the_peer_reads_it() -> None:
    weak = FakePeer(knows=set(), uses_context=True)
    leaky = FakePeer(knows={e.prompt for e in EXAMPLES}, uses_context=False, feedback="it is 3")
    row = peer_gains(weak, leaky, "A", "weak", EXAMPLES[3:4], T, gate_min_pass=0.5, feedback_tokens=8)
    assert weak.seen[-1] == "sort 3\n# it is ?" and row.feedback_leaked == 1.0


def test_anchoring_off_passes_the_leak_on_and_still_counts_it() -> None:
    """The anchoring-off control read by the pre-flight's measurement: the reader gets the answer as written."""
    weak = FakePeer(knows=set(), uses_context=True)
    texts = {e.prompt: (f"it is {e.answer}" if e.prompt in ("sort 3", "sort 4") else "steps") for e in EXAMPLES}
    leaky = FakePeer(knows={e.prompt for e in EXAMPLES}, uses_context=False, feedback=texts)
    row = peer_gains(weak, leaky, "A", "weak", EXAMPLES[2:6], T, gate_min_pass=0.5, feedback_tokens=8, anchoring=False)
    assert row.feedback_leaked == 0.5 and "sort 3\n# it is 3" in weak.seen and "sort 2\n# steps" in weak.seen
    assert peer_gains(weak, leaky, "A", "weak", EXAMPLES[2:6], T, gate_min_pass=0.5, feedback_tokens=8).feedback_leaked == 0.5
    assert "sort 4\n# it is ?" in weak.seen


def test_verdict_names_each_failure() -> None:
    ok = ContextGain("A", "reverse", "strong", plain=0.8, solution=0.95, solution_plain=0.85, n_solution=60, feedback=0.9, feedback_plain=0.8, n_feedback=50)
    weak = ContextGain("A", "sort", "weak", plain=0.2, solution=0.9, solution_plain=0.6, n_solution=20, feedback=0.8, feedback_plain=0.2, n_feedback=40)
    assert verdict([ok, weak]) == (True, [])
    not_weak = ContextGain("B", "reverse", "weak", plain=0.45, solution=0.5, solution_plain=0.6, n_solution=30, feedback=0.6, feedback_plain=0.4, n_feedback=0)
    ready, reasons = verdict([ok, not_weak])
    assert not ready and len(reasons) == 4, reasons  # solution worse, no feedback prompts, not weak, hint too low
    table = preflight_table({"rows": [ok.__dict__, not_weak.__dict__], "ready": ready, "reasons": reasons, "samples": 4})
    assert "NOT READY" in table and "| B      | reverse  | weak   |" in table
