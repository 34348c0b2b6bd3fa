"""The OPCoD scenario's pre-flight check: does the privileged context make each peer's teacher better?

OPCoD's teacher is the peer itself reading (a) its own correct rollout and (b)
the other peer's gated, anchored feedback.  If reading them does not make the
peer more accurate than it is on the plain prompt, that teacher pulls the
student *down* (lab v1's peers answered worse with their own solution in
context: 0.58 against 0.75 on ``reverse``), and no table run on the scenario
can test the method.  So the scenario build measures, per peer and domain, on
the same eval prompts and with the same decoding (avg@k at T = 1):

* ``plain`` -- the peer on the plain prompt (all prompts);
* ``solution`` -- the peer reading its own first correct rollout, on the
  prompts where it has one, against ``plain`` on those same prompts;
* ``feedback`` -- the peer reading the other peer's feedback (given only where
  the other peer's own rollouts pass the gate, answer masked), on the prompts
  that got some, against ``plain`` on those same prompts.

With the scenario's ``reference`` (the worked steps a good peer writes), each row also
says how much of the given feedback was *right* (``feedback_right``) and the reader's
accuracy with right and with wrong feedback against plain on those prompts: a
strong peer that reads right feedback as well as it answers plain but follows the
wrong part fails the check for the giver's errors, not its own reading, and the two
need different changes to the scenario.  These diagnostics do not enter the verdict.

Ready when every measured context beats ``plain`` on its prompts, and on each
peer's *weak* domain the plain peer is below ``weak_max_plain`` (0.3) while the
feedback lifts it above ``weak_min_hint`` (0.7): the regime where co-distillation
has something to pass on.  The verdict goes into the scenario manifest and is
printed by ``lab info --strategy opcod``; what must change when it fails is the
scenario, not the thresholds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from mopdx.backends.base import Sampling
from mopdx.backends.hf import HFRolloutBackend
from mopdx.codistill.privileged import Templates, anchor_feedback, feedback_prompt, gate, teacher_context
from mopdx.data import Example
from mopdx.text import encode_prompt
from mopdx.verifiers import grader


@dataclass
class ContextGain:
    """One peer on one domain: plain accuracy, and each context's accuracy against plain on the same prompts."""

    peer: str
    domain: str
    role: str  # strong | weak
    plain: float
    solution: float | None = None
    solution_plain: float | None = None  # plain accuracy on the prompts that had a correct rollout
    n_solution: int = 0
    feedback: float | None = None
    feedback_plain: float | None = None  # plain accuracy on the prompts that got feedback
    n_feedback: int = 0
    feedback_right: float | None = None  # share of the given feedback equal to the reference's (needs a reference)
    feedback_if_right: float | None = None  # accuracy reading right feedback ...
    feedback_plain_if_right: float | None = None  # ... and plain on those prompts
    feedback_if_wrong: float | None = None  # accuracy reading wrong feedback ...
    feedback_plain_if_wrong: float | None = None  # ... and plain on those prompts
    feedback_leaked: float | None = None  # share of the gated feedback that gave the answer away, before anchoring


def verdict(rows: Sequence[ContextGain], weak_max_plain: float = 0.3, weak_min_hint: float = 0.7) -> tuple[bool, list[str]]:
    """Whether the scenario is ready, and each reason it is not (empty when ready)."""
    reasons = []
    for r in rows:
        where = f"peer {r.peer} on {r.domain} ({r.role})"
        for part, acc, base, n in (("own solution", r.solution, r.solution_plain, r.n_solution), ("peer feedback", r.feedback, r.feedback_plain, r.n_feedback)):
            if n == 0 or acc is None or base is None:
                reasons.append(f"{where}: no prompt to measure {part} on")
            elif acc <= base:
                reasons.append(f"{where}: {part} in context {acc:.2f} <= plain {base:.2f} on the same {n} prompts")
        if r.role == "weak":
            if r.plain >= weak_max_plain:
                reasons.append(f"{where}: plain {r.plain:.2f} >= {weak_max_plain} (not weak enough)")
            if r.feedback is None or r.feedback <= weak_min_hint:
                reasons.append(f"{where}: with peer feedback {r.feedback if r.feedback is not None else float('nan'):.2f} <= {weak_min_hint}")
    return not reasons, reasons


class _Peer:
    """A peer model as the pre-flight uses it: sample k completions, grade them, write feedback."""

    def __init__(self, model: Any, tokenizer: Any, max_new_tokens: int, samples: int, seed: int) -> None:
        self.tok, self.backend = tokenizer, HFRolloutBackend(model, tokenizer.pad_token_id, tokenizer.eos_token_id)
        self.sampling = Sampling(n=samples, max_new_tokens=max_new_tokens, temperature=1.0, seed=seed)
        self.max_new_tokens = max_new_tokens

    def graded(self, prompts: list[str], examples: list[Example]) -> list[list[tuple[str, bool]]]:
        """Per prompt: its k sampled completions and their verdicts."""
        out = self.backend.generate([encode_prompt(self.tok, p) for p in prompts], [e.domain for e in examples], self.sampling)
        texts = self.tok.batch_decode(out.completion_ids, skip_special_tokens=True)
        per: list[list[tuple[str, bool]]] = [[] for _ in prompts]
        for p, text in zip(out.prompt_index.tolist(), texts):
            e = examples[p]
            per[p].append((text, grader(e.domain).verify(e.answer, text)))
        return per

    def feedback(self, examples: list[Example], templates: Templates, max_tokens: int, solutions: Sequence[str | None]) -> list[str]:
        """Greedy feedback on each prompt, as written (``peer_gains`` anchors it); ``solutions``: the
        peer's own passing rollout per prompt, for a feedback template that reads one."""
        prompts = [encode_prompt(self.tok, feedback_prompt(e.prompt, templates, s)) for e, s in zip(examples, solutions, strict=True)]
        out = self.backend.generate(prompts, [e.domain for e in examples],
                                    Sampling(max_new_tokens=max_tokens, greedy=True))
        return [" ".join(t.split()) for t in self.tok.batch_decode(out.completion_ids, skip_special_tokens=True)]


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def peer_gains(me: _Peer, other: _Peer, name: str, role: str, examples: list[Example], templates: Templates, gate_min_pass: float,
               feedback_tokens: int, reference: Callable[[Example], str] | None = None, anchoring: bool = True) -> ContextGain:
    """The pre-flight's three measurements for peer ``me`` on ``examples`` (one domain); with
    ``reference`` (an example -> the feedback a good peer writes), also whether each given
    feedback was right and how the reader did with right and with wrong feedback.  ``anchoring``
    off passes the feedback as written (the anchoring-off control); the leak share is measured either way."""
    acc = lambda graded: [sum(ok for _, ok in g) / len(g) for g in graded]  # noqa: E731
    plain = me.graded([e.prompt for e in examples], examples)
    plain_acc = acc(plain)
    row = ContextGain(name, examples[0].domain, role, _mean(plain_acc) or 0.0)
    solved = [(p, next(t for t, ok in g if ok)) for p, g in enumerate(plain) if any(ok for _, ok in g)]
    if solved:
        ex = [examples[p] for p, _ in solved]
        with_solution = me.graded([teacher_context(e.prompt, s, None, templates) for e, (_, s) in zip(ex, solved)], ex)
        row.solution, row.solution_plain, row.n_solution = _mean(acc(with_solution)), _mean([plain_acc[p] for p, _ in solved]), len(solved)
    theirs = other.graded([e.prompt for e in examples], examples)
    gated = [p for p, g in enumerate(theirs) if gate([ok for _, ok in g], gate_min_pass)]
    if gated:
        passing = [next((t for t, ok in theirs[p] if ok), None) for p in gated]  # as the loop's first_correct
        texts = other.feedback([examples[p] for p in gated], templates, feedback_tokens, passing)
        # anchored as the loop does: the answer masked, the feedback dropped if it still leaks
        anchored = [anchor_feedback(t, examples[p].answer, grader(examples[p].domain).leaks) for p, t in zip(gated, texts)]
        row.feedback_leaked = sum(leak for _, leak in anchored) / len(anchored)
        if anchoring:
            texts = [t for t, _ in anchored]
        given = [(p, t) for p, t in zip(gated, texts) if t]
        if given:
            ex = [examples[p] for p, _ in given]
            with_feedback = me.graded([teacher_context(e.prompt, None, t, templates) for e, (_, t) in zip(ex, given)], ex)
            row.feedback, row.feedback_plain, row.n_feedback = _mean(acc(with_feedback)), _mean([plain_acc[p] for p, _ in given]), len(given)
            if reference is not None:
                _split_by_rightness(row, [(p, t) for p, t in given], acc(with_feedback), plain_acc, examples, reference)
    return row


def _split_by_rightness(row: ContextGain, given: list[tuple[int, str]], with_acc: list[float], plain_acc: list[float],
                        examples: list[Example], reference: Callable[[Example], str]) -> None:
    """Fill ``row``'s feedback diagnostics: ``given`` (prompt index, anchored feedback) in the order ``with_acc`` was measured."""
    right = [t.split() == anchor_feedback(reference(examples[p]), examples[p].answer, grader(examples[p].domain).leaks)[0].split() for p, t in given]
    row.feedback_right = sum(right) / len(right)
    for ok, attr in ((True, "if_right"), (False, "if_wrong")):
        picked = [i for i, r in enumerate(right) if r == ok]
        setattr(row, f"feedback_{attr}", _mean([with_acc[i] for i in picked]))
        setattr(row, f"feedback_plain_{attr}", _mean([plain_acc[given[i][0]] for i in picked]))


def opcod_preflight(peers: dict[str, tuple[Any, Any]], strong: dict[str, str], examples: list[Example], templates: Templates, *,
                    samples: int = 4, max_new_tokens: int = 16, feedback_tokens: int = 16, gate_min_pass: float = 0.5, seed: int = 0,
                    weak_max_plain: float = 0.3, weak_min_hint: float = 0.7, reference: Callable[[Example], str] | None = None,
                    anchoring: bool = True) -> dict[str, Any]:
    """Run the check; ``peers``: name -> (model, tokenizer), exactly two; ``strong``: name -> its strong domain;
    ``reference``, ``anchoring``: see ``peer_gains``.
    Returns what the manifest records: the rows, ``ready`` and the reasons it is not."""
    import torch

    names = list(peers)
    wrapped = {n: _Peer(m, t, max_new_tokens, samples, seed) for n, (m, t) in peers.items()}
    domains = sorted({e.domain for e in examples})
    rows = []
    with torch.no_grad():
        for me, other in ((names[0], names[1]), (names[1], names[0])):
            for d in domains:
                ex = [e for e in examples if e.domain == d]
                role = "strong" if strong.get(me) == d else "weak"
                rows.append(peer_gains(wrapped[me], wrapped[other], me, role, ex, templates, gate_min_pass, feedback_tokens, reference, anchoring))
    ready, reasons = verdict(rows, weak_max_plain, weak_min_hint)
    return {"rows": [asdict(r) for r in rows], "ready": ready, "reasons": reasons, "samples": samples, "prompts_per_domain": len(examples) // max(1, len(domains)),
            "weak_max_plain": weak_max_plain, "weak_min_hint": weak_min_hint, "gate_min_pass": gate_min_pass}


def preflight_table(result: dict[str, Any]) -> str:
    """The manifest's pre-flight as a markdown table and a verdict line."""
    import pandas as pd

    fmt = lambda v: "-" if v is None or v != v else f"{v:.2f}"  # noqa: E731
    frame = pd.DataFrame(result["rows"])
    for col in ("plain", "solution", "solution_plain", "feedback", "feedback_plain"):
        frame[col] = frame[col].map(fmt)
    cols = ["peer", "domain", "role", "plain", "solution", "solution_plain", "n_solution", "feedback", "feedback_plain", "n_feedback"]
    note = ""
    if "feedback_right" in frame and frame["feedback_right"].notna().any():  # manifests from before the diagnostics lack it
        frame["fb_right"] = frame["feedback_right"].map(fmt)
        for part in ("right", "wrong"):
            frame[f"fb_if_{part}"] = [f"{fmt(a)} / {fmt(b)}" for a, b in zip(frame[f"feedback_if_{part}"], frame[f"feedback_plain_if_{part}"])]
        cols += ["fb_right", "fb_if_right", "fb_if_wrong"]
        note = "; fb_right: share of the feedback equal to the reference's steps; fb_if_*: with that feedback / plain, on those prompts"
    table = frame[cols].to_markdown(index=False)
    verdict_line = "READY" if result["ready"] else "NOT READY:\n  - " + "\n  - ".join(result["reasons"])
    return f"{table}\n(accuracy avg@{result['samples']} at T=1; *_plain: the plain peer on the same prompts{note})\npre-flight: {verdict_line}"
