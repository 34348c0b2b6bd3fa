"""``analyze coherence``: gradient coherence of a run, at each kept checkpoint.

Run: ``python -m mopdx analyze coherence --run runs/<run>`` (fit the run with
``train.keep_checkpoints=true`` to get a figure over training).  For each
checkpoint the student samples a fixed set of prompts per group (the run's
``eval.groups``, else one group per domain); the run's teachers prefill them
with what its loss needs; per-sample gradients of each rollout's contribution
to the run's loss exactly as trained (kind, options and ``loss.average``, from
``losses.LOSSES``) over the last ``--layers`` decoder layers (+ LM head) give the coherence of all rollouts and of each group, the
cosine / dot product between the first two groups' mean gradients (general
recovery vs domain preservation), the coherence gain of CaMOPD-style selection
over all rollouts and over size-matched random subsets, and pairwise cosines.

Selection here is the run's own: each group's gap definition, length
normalisation and ``rho`` come from its CaMOPD settings (a group of recovery
domains uses ``recovery_gap``, of review domains ``review_gap``; other runs:
``abs``, ``mean`` and ``--rho``).  Why the random subsets: a smaller subset of
gradients is more coherent by itself (a random half already scores ~1.4x the
whole batch), so the selection's own contribution is its coherence against
random subsets of the same per-group sizes, with the fraction of those that
reach it (a permutation p-value).

``--split-tokens`` (e.g. ``"|" " "``) also splits each rollout's gradient into the
part that flows through completion positions whose sampled token is one of those
strings and the rest (they add up to the whole), and reports the two groups'
alignment on each part: a conflict on a few format tokens can be hidden in the
whole-gradient cosine by a larger shared pull on the tokens both teachers agree on.

``--estimator expected`` (PG runs) replaces each position's sampled-token PG term by its exact
expectation over the next token (``coherence.expected_pg_sample_loss``): the same expected
update, without the next-token sampling noise that lets a few slips carry a group's mean
gradient.  Each group's ``concentration`` (effective number of rollouts) says which to read.

Writes ``<run>/analysis/coherence.json`` and ``coherence.png``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from mopdx.backends.base import Sampling, ScoreRequest
from mopdx.backends.hf import HFRolloutBackend, HFTeacherScorer
from mopdx.config import load_config
from mopdx.data import Example, PromptPool
from mopdx.distill.routing import route_and_score
from mopdx.errors import ConfigError, MopdxError
from mopdx.experiments.coherence import (
    SampleBatch,
    coherence,
    coherence_gain,
    concentration,
    group_alignment,
    pairwise_cosines,
    per_sample_grads,
    select_params,
)
from mopdx.losses import LossSpec
from mopdx.models import load_model, load_tokenizer
from mopdx.teacher_config import panel_of
from mopdx.plugins import is_remote, resolve_ref
from mopdx.run.assembly import install_run_format, read_examples
from mopdx.selection import select_top_fraction, sequence_gap
from mopdx.text import encode_prompt


def checkpoints(run: Path) -> list[tuple[int, Path]]:
    """(step, file) of every kept checkpoint, oldest first (``last.ckpt`` when it is the only one)."""
    found = []
    for f in (run / "checkpoints").glob("*.ckpt"):
        m = re.search(r"step=(\d+)", f.name)
        if m:
            found.append((int(m.group(1)), f))
    if not found and (run / "checkpoints" / "last.ckpt").is_file():
        step = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["global_step"]
        found.append((int(step), run / "checkpoints" / "last.ckpt"))
    return sorted(found)


def _student_state(ckpt: Path) -> dict[str, torch.Tensor]:
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    return {k[len("student."):]: v for k, v in state.items() if k.startswith("student.")}


def group_gap_modes(strategy: Any, groups: dict[str, list[str]]) -> dict[str, str]:
    """Each group's gap definition as the run's strategy selects with it (``abs`` without one)."""
    rec, rev = list(strategy.get("recovery_domains") or []), list(strategy.get("review_domains") or [])
    modes = {}
    for name, ds in groups.items():
        if rec and all(d in rec for d in ds):
            modes[name] = str(strategy.recovery_gap)
        elif rev and all(d in rev for d in ds):
            modes[name] = str(strategy.review_gap)
        else:
            modes[name] = "abs"
    return modes


def group_prompts(examples: list[Example], groups: dict[str, list[str]], ratios: dict[str, float], n: int, seed: int) -> dict[str, list[Example]]:
    """``n`` prompts per group, drawn (seeded) across the group's domains in the shares training
    uses (``data.domain_ratios``, uniform when empty), so a group's mean gradient is the one mixed
    updates take.  Not the file's first ``n``: a lab file lists one domain after another, and a
    group of two domains was measured on its first domain alone."""
    pool, out = PromptPool(examples, seed), {}
    for g, ds in groups.items():
        present = [d for d in ds if d in pool.by_domain]
        shares = {d: float(ratios.get(d, 0.0)) for d in present}
        out[g] = pool.draw(0, shares if sum(shares.values()) > 0 else dict.fromkeys(present, 1.0), n) if present else []
    return out


def random_subset_coherence(g: torch.Tensor, idx: dict[str, list[int]], counts: dict[str, int], draws: int, seed: int) -> list[float]:
    """Coherence of ``draws`` random subsets with ``counts[group]`` rollouts from each group."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(draws):
        pick = [idx[name][int(j)] for name in idx for j in torch.randperm(len(idx[name]), generator=gen)[: counts[name]]]
        out.append(coherence(g[torch.tensor(pick)]))
    return out


def token_marks(tok: Any, completion_ids: torch.Tensor, mask: torch.Tensor, strings: Sequence[str]) -> torch.Tensor:
    """``[B, C]`` 0/1: the completion positions whose token decodes to one of ``strings``."""
    wanted = set(strings)
    ids = sorted({int(i) for i in completion_ids.unique()})
    hit = torch.tensor([i for i in ids if tok.decode([i]) in wanted], dtype=completion_ids.dtype)
    return (torch.isin(completion_ids.cpu(), hit) & mask.cpu().bool()).float()


def split_alignment(g: torch.Tensor, g_split: torch.Tensor, a: list[int], b: list[int]) -> dict[str, Any]:
    """The two groups' alignment on the split tokens' gradient and on the rest's (``g - g_split``),
    with each part's share of each group's mean-gradient norm."""
    rest = g - g_split
    ia, ib = torch.as_tensor(a), torch.as_tensor(b)

    def share(part: torch.Tensor, rows: torch.Tensor) -> float:
        whole = float(g[rows].mean(0).norm())
        return float(part[rows].mean(0).norm()) / whole if whole > 0 else float("nan")

    return {"split": {**group_alignment(g_split, a, b), "norm_share": [share(g_split, ia), share(g_split, ib)]},
            "rest": {**group_alignment(rest, a, b), "norm_share": [share(rest, ia), share(rest, ib)]}}


def analyze_run(run: Path, n_per_group: int = 16, last_layers: int = 1, method: str = "vmap", rho: float | None = None, seed: int = 0,
                random_draws: int = 64, split_tokens: Sequence[str] = (), estimator: str = "sampled") -> dict[str, Any]:
    if not (run / "config.yaml").is_file():
        raise MopdxError(f"{run} is not a run folder (no config.yaml)")
    cfg = load_config(None, [run / "config.yaml"], [])
    ckpts = checkpoints(run)
    if not ckpts:
        raise MopdxError(f"{run} has no checkpoints; fit with train.ckpt_every>0 (and train.keep_checkpoints=true for a curve)")
    student_dir = resolve_ref(cfg.model.student, cfg)
    tok = load_tokenizer(student_dir)
    student = load_model(student_dir)
    install_run_format(cfg)
    examples = read_examples(cfg, "data.train", False)
    domains = sorted({e.domain for e in examples})
    groups = {g: list(ds) for g, ds in cfg.eval.groups.items()} or {d: [d] for d in domains}
    by_group = group_prompts(examples, groups, dict(cfg.data.domain_ratios), n_per_group, seed)
    prompts = [e for g in groups for e in by_group[g]]
    labels = [g for g in groups for _ in by_group[g]]
    panels = [d for d in domains if panel_of(cfg.model.teachers.get(d)) is not None]
    if panels:
        raise ConfigError(f"gradient coherence takes one teacher per domain; domain(s) {panels} have a panel: name one folder each")
    teacher_dirs = {d: resolve_ref(cfg.model.teachers[d], cfg) for d in domains if not is_remote(cfg.model.teachers[d])}
    teachers = {d: HFTeacherScorer(load_model(p), temperature=cfg.loss.teacher_temperature) for d, p in teacher_dirs.items()}
    spec = LossSpec.from_cfg(cfg.loss)  # the run's loss exactly: kind, options, average (losses.LOSSES)
    request = spec.request()
    if estimator == "expected":  # the exact next-token expectation reads the teacher's whole distribution
        request = ScoreRequest(topk=request.topk, full=True)
    params = select_params(student, last_layers)
    strat = cfg.strategy
    rho = float(rho if rho is not None else strat.get("rho", 0.5))
    modes = group_gap_modes(strat, groups)
    length_norm = str(strat.get("gap_length", "mean"))
    results = []
    for step, path in ckpts:
        student.load_state_dict(_student_state(path))
        backend = HFRolloutBackend(student, tok.pad_token_id, tok.eos_token_id)
        r = backend.generate([encode_prompt(tok, e) for e in prompts], [e.domain for e in prompts], Sampling(max_new_tokens=cfg.rollout.max_new_tokens, seed=seed))
        teacher = route_and_score(r, teachers, request)
        batch = SampleBatch.from_rollouts(r, tok.pad_token_id)
        g = per_sample_grads(student, batch, teacher, spec, params, method=method, estimator=estimator)
        idx = {name: [i for i, lab in enumerate(labels) if lab == name] for name in groups}
        gaps = {name: sequence_gap(teacher.logps[idx[name]], r.rollout_logps[idx[name]], r.completion_mask[idx[name]], modes[name], length_norm)
                for name in groups}
        chosen = {name: select_top_fraction(gaps[name], rho).tolist() for name in groups}
        selected = [idx[name][int(j)] for name in groups for j in chosen[name]]
        random_coh = torch.tensor(random_subset_coherence(g, idx, {name: len(c) for name, c in chosen.items()}, random_draws, seed), dtype=torch.float64)
        sel_coh = coherence(g[torch.tensor(selected)])
        cos = pairwise_cosines(g)
        names = list(groups)
        entry: dict[str, Any] = {
            "step": step,
            "coherence_all": coherence(g),
            "coherence_by_group": {name: coherence(g[idx[name]]) for name in names},
            "concentration_by_group": {name: concentration(g[idx[name]]) for name in names},
            "selected_coherence": sel_coh,
            "selection_gain": coherence_gain(g, selected),
            "random_coherence": {"mean": float(random_coh.mean()), "std": float(random_coh.std()),
                                 "q90": float(random_coh.quantile(0.9)), "draws": random_draws},
            "gain_vs_random": sel_coh / float(random_coh.mean()) - 1.0,
            "p_random_at_least_selected": float((random_coh >= sel_coh).float().mean()),
            "pairwise_cos": {"mean": float(cos.mean()), "std": float(cos.std()), "q10": float(cos.quantile(0.1)), "q90": float(cos.quantile(0.9))},
            "pairwise_cos_values": cos.tolist(),
        }
        if len(names) >= 2:
            entry["alignment"] = {"groups": names[:2], **group_alignment(g, idx[names[0]], idx[names[1]])}
            if split_tokens:
                marks = token_marks(tok, batch.completion_ids, batch.mask, split_tokens)
                g_split = per_sample_grads(student, batch, teacher, spec, params, method=method, token_weight=marks, estimator=estimator)
                entry["alignment_by_tokens"] = {"tokens": list(split_tokens), "token_share": float(marks.sum() / batch.mask.sum()),
                                                **split_alignment(g, g_split, idx[names[0]], idx[names[1]])}
        results.append(entry)
    return {"run": str(run), "strategy": cfg.strategy.name, "loss": spec.kind, "loss_average": spec.average, "estimator": estimator, "params": params,
            "n_per_group": n_per_group, "rho": rho,
            "gap_modes": modes, "gap_length": length_norm, "checkpoints": results}


def plot_coherence(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cks = result["checkpoints"]
    steps = [c["step"] for c in cks]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    axes[0].plot(steps, [c["coherence_all"] for c in cks], marker="o", label="all")
    axes[0].plot(steps, [c["selected_coherence"] for c in cks], marker="s", label=f"selected (rho={result['rho']})")
    rand = [c["random_coherence"] for c in cks]
    axes[0].errorbar(steps, [x["mean"] for x in rand], yerr=[x["std"] for x in rand], marker="^", capsize=3, label="random, same sizes")
    for name in cks[0]["coherence_by_group"]:
        axes[0].plot(steps, [c["coherence_by_group"][name] for c in cks], marker=".", ls="--", label=name)
    axes[0].set_title("coherence ||sum g|| / sum ||g||")
    axes[0].set_xlabel("step")
    axes[0].legend(fontsize=7)
    if "alignment" in cks[0]:
        a, b = cks[0]["alignment"]["groups"]
        axes[1].plot(steps, [c["alignment"]["cos"] for c in cks], marker="o")
        axes[1].axhline(0, color="gray", lw=0.8)
        axes[1].set_title(f"cos(mean grad {a}, mean grad {b})")
        axes[1].set_xlabel("step")
    axes[2].hist(cks[-1]["pairwise_cos_values"], bins=40)
    axes[2].set_title(f"pairwise cosines at step {steps[-1]}")
    fig.suptitle(f"{Path(result['run']).name} ({result['strategy']}, {result['loss']} loss)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_analysis(run: Path, **kwargs: Any) -> dict[str, Any]:
    result = analyze_run(run, **kwargs)
    out = run / "analysis"
    out.mkdir(exist_ok=True)
    (out / "coherence.json").write_text(json.dumps(result, indent=2))
    plot_coherence(result, out / "coherence.png")
    result["out"] = str(out)
    return result
