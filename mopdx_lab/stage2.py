"""Stage 2 of the lab by RFT: one specialist per domain, trained until it is a teacher of the papers' regime.

Each round of rejection-sampling fine-tuning (``mopdx_lab.rft``) is followed,
in the closed-loop build, by a measurement on the domain's check prompts: the
specialist's sampled accuracy against Stage 1's, and the per-token KL
Stage 1 -> specialist on Stage 1's own samples (what a MOPD run's first step
reads).  The loop stops on the first round whose teacher is at least
``lab.regime.min_gap`` above the student with its KL inside
``[lab.regime.kl_min, lab.regime.kl_max]``; ``lab.rft.rounds`` is the
ceiling.  A KL above the bound stops it at once (more rounds only move the
teacher farther), with the line that says so.  Within a round, every
``lab.targets.specialist_every`` SFT steps, the round ends as soon as its
specialist is made (sampled accuracy >= ``lab.targets.specialist`` on the check
prompts, inside the regime): training on only sharpens it away from the student.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from mopdx.data import load_prompts
from mopdx_lab.regime import initial_kl
from mopdx_lab.rft import RFTSpec, rft
from mopdx_lab.targets import Check
from mopdx.models import load_model, load_tokenizer


def rft_specialist(lab: DictConfig, root: Path, domain: str, check: Check | None) -> tuple[Any, Any, dict[str, Any]]:
    """Stage 1 trained by RFT on ``domain``'s training prompts; returns (model, tokenizer, its
    ``lab_info.json`` record, ``targets.missed`` the line of a missed target or null).  ``check`` None: all
    ``lab.rft.rounds`` (the open-loop build)."""
    tok = load_tokenizer(root / "models" / "stage1")
    model = load_model(root / "models" / "stage1")
    train = [e for e in load_prompts(root / "data" / "train.jsonl") if e.domain == domain]
    r = lab.rft
    spec = RFTSpec(rounds=r.rounds, prompts=r.prompts, group=r.group, steps=r.steps, lr=r.lr, batch_size=lab.batch_size,
                   max_new_tokens=int(lab.max_new_tokens), seed=lab.seed + 1)
    info: dict[str, Any] = {"stage": 2, "domain": domain, "init": "stage1", "method": "RFT (own verified samples)", "steps_per_round": r.steps}
    verdict: dict[str, Any] = {"closed_loop": check is not None, "missed": None}
    after_round = None
    if check is not None:
        prompts = [e for e in check.prompts if e.domain == domain]
        student = load_model(root / "models" / "stage1")
        student_acc = check.accuracy(student, tok, domains=[domain])[domain]
        rounds: list[dict[str, Any]] = []
        verdict.update(student=student_acc, rounds=rounds)

        def after_round(done: int) -> bool:
            teacher_acc = check.accuracy(model, tok, domains=[domain])[domain]
            kl = initial_kl(student, model, tok, prompts, check.max_new_tokens, seed=check.seed)
            rounds.append({"round": done, "teacher": teacher_acc, "kl": round(kl, 4)})
            verdict["missed"] = teacher_problem(lab, domain, done, student_acc, teacher_acc, kl)
            return verdict["missed"] is None or kl > lab.regime.kl_max

        def within_round(step: int) -> bool:
            """The round's specialist is made: accurate enough, and inside the regime (KL measured only then)."""
            teacher_acc = check.accuracy(model, tok, domains=[domain])[domain]
            if teacher_acc < float(lab.targets.specialist):
                return False
            kl = initial_kl(student, model, tok, prompts, check.max_new_tokens, seed=check.seed)
            verdict.setdefault("stopped_at", []).append({"step": step, "teacher": teacher_acc, "kl": round(kl, 4)})
            return teacher_problem(lab, domain, len(rounds) + 1, student_acc, teacher_acc, kl) is None

    accepted = rft(model, tok, train, spec, desc=f"stage2 {domain} specialist (RFT)", after_round=after_round,
                   within_round=within_round if check is not None else None, check_every=int(lab.targets.specialist_every))
    if check is not None and len(verdict["rounds"]) < len(accepted):  # the last round found nothing to keep
        after_round(len(accepted))
    info.update(rounds=len(accepted), accepted=[round(a, 4) for a in accepted], targets=verdict)
    return model, tok, info


def teacher_problem(lab: DictConfig, domain: str, rounds: int, student: float, teacher: float, kl: float) -> str | None:
    """The line a teacher outside the regime's gap or KL stops the build with, or None when it is inside."""
    b = lab.regime
    gap = teacher - student
    if b.kl_min <= kl <= b.kl_max and gap >= b.min_gap:
        return None
    if kl > b.kl_max:
        fix = "lower lab.rft.steps or lab.rft.lr (more rounds only move it farther)"
    elif gap < b.min_gap and rounds >= lab.rft.rounds:
        fix = "raise lab.rft.rounds or lab.rft.steps"
    else:
        fix = "raise lab.rft.rounds"
    return (f"teacher/{domain} after {rounds} RFT round(s): sampled accuracy {teacher:.3f} against Stage 1's {student:.3f} "
            f"(gap {gap:+.3f}; lab.regime.min_gap={b.min_gap:g}), KL {kl:.3f} nats/token (lab.regime.kl_min/kl_max = "
            f"{b.kl_min:g}/{b.kl_max:g}) on the check prompts; {fix}")

