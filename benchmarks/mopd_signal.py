"""Where MOPD's per-token teacher signal lands, against the verifier's: evidence for issue 15's "why".

MOPD's advantage on token ``t`` of a student sample is ``log p_T(y_t) - log p_S(y_t)``
(measured raw here; a run clips it at ``loss.adv_clip``);
a verifier-reward method (Mix-RL, GRPO) gives every token of a sample the same
group-normalised reward.  The lab's answers are exact, so a wrong sample's *first
error* is known: the first token that leaves the reference.  For each student
checkpoint and domain this script samples ``--samples`` completions (T = 1) of
``--prompts`` held-out prompts and measures

* ``acc``: sampled accuracy; ``kl``: per-token KL student -> teacher (the run's ``kl``);
* ``mixed_groups``: the share of prompts whose ``--samples`` completions have both outcomes
  (a GRPO group of that size has a signal only then);
* at the first error of wrong samples: how often the teacher's advantage is
  negative (it *flags* the error), its mean, and the teacher's and student's
  probability of the wrong token;
* ``share_at_error``: the first error's share of the sample's negative advantage
  mass (what fraction of MOPD's push-down lands on the token that is wrong; a
  verifier's uniform credit gives it ``1 / length``);
* ``grad_share_mopd`` / ``grad_share_uniform``: the first error's share of the sample's
  logit gradient (``|A_t| * |e_y - p_t|``) under MOPD's per-token advantage and under a
  verifier's uniform one.  A token the student is sure of takes almost no gradient
  whatever its advantage, so uniform credit concentrates by itself where the student
  is unsure; dense credit only pays where a correct answer has many unsure tokens;
* ``mopd_grad_on_errors`` / ``mopd_grad_on_right``: over the whole batch, the share of MOPD's
  logit-gradient mass on the first errors of wrong samples, and on right samples (where
  it moves the student toward the teacher's own uncertainty; a negative-only verifier
  advantage puts nothing there);
* ``adv_correct`` / ``entropy_correct``: the mean advantage and per-token entropy on correct
  samples (a correct answer is unique, so MOPD's signal there can only sharpen what is
  already right).

Usage (the lab's Stage 1 and a MOPD run's final weights)::

    python benchmarks/mopd_signal.py --student start=artifacts/lab/<hash>/models/stage1 \
        --student mopd=runs/paper_v2/mopd-seed0/final [--prompts 200 --samples 8]

Prints one table and writes ``mopd_signal.json`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd
import torch

from mopdx.backends.base import Sampling
from mopdx.backends.hf import HFRolloutBackend, completion_logits
from mopdx.config import load_config
from mopdx.data import load_prompts, take_per_domain
from mopdx.verifiers import grader
from mopdx_lab.build import lab_dir
from mopdx.models import check_model_folder, load_model, load_tokenizer
from mopdx.text import encode_completion, encode_prompt


def _default_lab() -> Path:
    """The lab the default config builds (the one README command 1 and ``compare`` use)."""
    path = lab_dir(load_config().lab)
    if not (path / "manifest.json").is_file():
        raise SystemExit(f"no built lab at {path}: run `python -m mopdx lab build` first")
    return path


@torch.no_grad()
def _token_logps(model: torch.nn.Module, rollouts) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-prob of each sampled token, and of every vocabulary entry ([B, C], [B, C, V])."""
    logits = completion_logits(model, rollouts.input_ids, rollouts.attention_mask, rollouts.prompt_len)
    full = torch.log_softmax(logits, -1)
    return full.gather(-1, rollouts.completion_ids.unsqueeze(-1)).squeeze(-1), full


def first_error(completion: list[int], reference: list[int]) -> int | None:
    """Index of the first completion token that leaves ``reference`` (None: no error)."""
    for t, tok in enumerate(completion):
        if t >= len(reference) or tok != reference[t]:
            return t
    return None if len(completion) == len(reference) else len(completion)


def logit_grad_norm(logp_full: torch.Tensor, logp_token: torch.Tensor) -> torch.Tensor:
    """``|d log p(y_t) / d logits_t| = |e_y - p_t|`` per token: the gradient a unit advantage on
    token t makes ([..., V], [...] -> [...]); near 0 where the student is sure of y_t."""
    probs = logp_full.exp()
    return (1 - 2 * logp_token.exp() + (probs * probs).sum(-1)).clamp(min=0).sqrt()


@torch.no_grad()
def measure(student_dir: str, teachers: dict[str, torch.nn.Module], tokenizer, prompts, samples: int, max_new_tokens: int, seed: int) -> list[dict]:
    """One row per domain: accuracy, KL, and the teacher signal at first errors and on correct samples."""
    student = load_model(student_dir, what="student").eval()
    backend = HFRolloutBackend(student, tokenizer.pad_token_id, tokenizer.eos_token_id)
    rows = []
    for domain in sorted({e.domain for e in prompts}):
        exs = [e for e in prompts if e.domain == domain]
        verifier = grader(domain)
        ro = backend.generate([encode_prompt(tokenizer, e.prompt) for e in exs], [domain] * len(exs),
                              Sampling(n=samples, max_new_tokens=max_new_tokens, seed=seed))
        ls, ls_full = _token_logps(student, ro)
        gnorm = logit_grad_norm(ls_full, ls)
        entropy = -(ls_full.exp() * ls_full).sum(-1)
        lt, lt_full = _token_logps(teachers[domain], ro)
        adv, mask = (lt - ls), ro.completion_mask
        err = dict(flagged=[], adv=[], p_teacher=[], p_student=[], share=[], grad_mopd=[], grad_uniform=[], p_teacher_ref=[], position=[])
        adv_correct, entropy_correct, correct = [], [], 0
        right = torch.zeros(len(exs))
        mass = (adv.abs() * gnorm * mask).sum(-1)  # each sample's MOPD logit-gradient mass
        mass_right = mass_errors = 0.0
        for i, p in enumerate(ro.prompt_index.tolist()):
            n = int(mask[i].sum())
            ids = ro.completion_ids[i, :n].tolist()
            text = tokenizer.decode([t for t in ids if t != tokenizer.eos_token_id], skip_special_tokens=True)
            if verifier.verify(exs[p].answer, text):
                correct += 1
                right[p] += 1
                mass_right += float(mass[i])
                adv_correct.append(float(adv[i, :n].mean()))
                entropy_correct.append(float(entropy[i, :n].mean()))
                continue
            ref = encode_completion(tokenizer, exs[p].answer)
            t = first_error(ids, ref)
            if t is None or t >= n:
                continue
            a = adv[i, :n]
            neg = (-a).clamp(min=0).sum()
            err["flagged"].append(float(a[t] < 0))
            err["adv"].append(float(a[t]))
            err["p_teacher"].append(float(lt[i, t].exp()))
            err["p_student"].append(float(ls[i, t].exp()))
            err["share"].append(float((-a[t]).clamp(min=0) / neg) if neg > 0 else 0.0)
            g = gnorm[i, :n]
            mass_errors += float(a[t].abs() * g[t])
            err["grad_mopd"].append(float(a[t].abs() * g[t] / (a.abs() * g).sum().clamp(min=1e-12)))
            err["grad_uniform"].append(float(g[t] / g.sum().clamp(min=1e-12)))
            err["p_teacher_ref"].append(float(lt_full[i, t, ref[t]].exp()) if t < len(ref) else float("nan"))
            err["position"].append(t / n)
        mean = lambda xs: float(torch.tensor(xs, dtype=torch.float64).nanmean()) if xs else float("nan")  # noqa: E731
        rows.append({
            "domain": domain, "acc": correct / len(ro), "mixed_groups": float(((right > 0) & (right < samples)).float().mean()), "kl": float((-adv * mask).sum() / mask.sum()),
            "wrong": len(err["adv"]), "flagged": mean(err["flagged"]), "adv_at_error": mean(err["adv"]),
            "p_T(error)": mean(err["p_teacher"]), "p_S(error)": mean(err["p_student"]), "p_T(reference)": mean(err["p_teacher_ref"]),
            "share_at_error": mean(err["share"]), "grad_share_mopd": mean(err["grad_mopd"]), "grad_share_uniform": mean(err["grad_uniform"]),
            "error_position": mean(err["position"]), "adv_correct": mean(adv_correct),
            "mopd_grad_on_errors": mass_errors / float(mass.sum()), "mopd_grad_on_right": mass_right / float(mass.sum()), "entropy_correct": mean(entropy_correct),
        })
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--student", action="append", required=True, help="NAME=FOLDER, repeatable")
    ap.add_argument("--lab", default=None, help="built lab folder (default: the default config's)")
    ap.add_argument("--prompts", type=int, default=200, help="held-out prompts per domain")
    ap.add_argument("--samples", type=int, default=8, help="samples per prompt (T = 1)")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--out", default="benchmarks/results/mopd_signal")
    args = ap.parse_args()
    torch.manual_seed(0)
    lab = Path(args.lab) if args.lab else _default_lab()
    manifest = json.loads((lab / "manifest.json").read_text())
    tokenizer = load_tokenizer(manifest["artifacts"]["stage1"])
    prompts = take_per_domain(load_prompts(lab / "data" / "eval.jsonl"), args.prompts)
    teachers = {d: load_model(manifest["artifacts"][f"teacher/{d}"], what=f"teacher {d}").eval() for d in {e.domain for e in prompts}}
    students = [spec.partition("=")[::2] for spec in args.student]
    for spec, (name, folder) in zip(args.student, students):
        if not folder:
            raise SystemExit(f"--student {spec!r}: expected NAME=FOLDER (a Hugging Face model folder, e.g. a run's final/)")
        check_model_folder(folder, f"--student {name}")
    rows = []
    for name, folder in students:
        for r in measure(folder, teachers, tokenizer, prompts, args.samples, manifest["eval"]["max_new_tokens"], args.seed):
            rows.append({"student": name, **r})
    table = pd.DataFrame(rows)
    print(table.to_markdown(index=False, floatfmt=".3f"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "mopd_signal.json").write_text(json.dumps({"lab": str(lab), "prompts": args.prompts, "samples": args.samples, "rows": rows}, indent=1))
    print(f"wrote {out / 'mopd_signal.json'}")


if __name__ == "__main__":
    main()
