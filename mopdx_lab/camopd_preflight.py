"""The CaMOPD scenario's pre-flight check: do recovery and preservation really counteract?

CaMOPD's argument is that under *mixed* MOPD updates the general-recovery and
domain-preservation gradients point against each other.  If on the scenario
they do not, the scenario cannot test the method, whatever the tables say.
So the build runs a short mixed MOPD fit on the scenario (every rollout kept,
the mixture of ``lab.camopd.mix``, the scenario's teachers) and measures, with
the same code as ``python -m mopdx analyze coherence``, the cosine between the
mean recovery-group and preservation-group gradients (all decoder layers + head)
at its checkpoints.  Step 0 is not measured: the student *is* the domain
teacher there, so the preservation gradient is exactly zero.

The statistic is the mean cosine over the pre-flight's checkpoints (steps
``preflight_steps / 3``, ``2/3`` and the last), not the last one alone: one
checkpoint's cosine, from 16-32 sampled prompts per group, swung by +-0.2 from
one checkpoint to the next on the same run, so a single reading passes or fails
by chance.  Each checkpoint's value is recorded too, with the effective number of
rollouts that carry each group's mean gradient (``coherence.concentration``) and the
cosine on the domains' separator tokens alone.

The verdict's estimator is ``lab.camopd.preflight_estimator``; both are measured and
recorded.  ``expected`` (the default) takes, at each position of the sampled rollouts,
the PG term's exact expectation over the next token: the same expected update as the
sampled loss, without next-token sampling noise.  Why: with the *sampled* tokens, a
sharp student's per-rollout gradients spanned six orders of magnitude and 1-5 slipped
rollouts of 256 carried a group's whole "mean" gradient (split-half cosines 0.0-0.4),
so the cosine compared a handful of slips, ~0 whatever the scenario; the expected
estimator's means were stable (split-half 0.97-1.00) on the same checkpoints.  The result goes into the
scenario's manifest; when the mean is not below ``lab.camopd.preflight_max_cos``
(-0.1) the build warns loudly: the scenario is not ready, and what must change
is the scenario.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, open_dict

log = logging.getLogger("mopdx")


def preflight_overrides(lab: DictConfig, scenario: Path, run_dir: Path) -> list[str]:
    """The mixed MOPD fit of the pre-flight: the scenario's student, teachers, data and mixture."""
    c = lab.camopd
    every = max(1, int(c.preflight_steps) // 3)
    teachers = {**{d: scenario / "general" for d in c.recovery_domains}, str(c.review_domain): scenario / "specialist"}
    return [
        f"model.student={scenario / 'specialist'}", f"data.train={scenario / 'train.jsonl'}", f"data.eval={scenario / 'eval.jsonl'}",
        *(f"model.teachers.{d}={path}" for d, path in teachers.items()),
        f"rollout.max_new_tokens={lab.max_new_tokens}", f"eval.max_new_tokens={lab.max_new_tokens}",
        f"train.max_steps={c.preflight_steps}", "train.eval_every=0", f"train.ckpt_every={every}", "train.keep_checkpoints=true",
        f"train.seed={lab.seed}", f"run.out_dir={run_dir.parent}", f"run.name={run_dir.name}",
    ]


def preflight(lab: DictConfig, scenario: Path, progress: bool = True) -> dict[str, Any]:
    """Run the check on the built scenario folder; returns what the manifest records."""
    from mopdx.config import load_config
    from mopdx.experiments.coherence import ESTIMATORS
    from mopdx.experiments.run_coherence import analyze_run
    from mopdx_lab.domains import get_domain
    from mopdx.run.fit import fit

    c = lab.camopd
    run_dir = scenario / "preflight"
    shutil.rmtree(run_dir, ignore_errors=True)  # an interrupted check starts over (a minute or two)
    cfg = load_config("mopd", overrides=preflight_overrides(lab, scenario, run_dir))
    with open_dict(cfg):
        general, review = list(c.recovery_domains), str(c.review_domain)
        cfg.data.domain_ratios = dict(c.mix)
        cfg.eval.groups = {"general": general, "domain": [review]}
    fit(cfg, progress=progress)
    chosen = str(c.preflight_estimator)
    seps = sorted({str(getattr(get_domain(d), "sep", "")) for d in (*general, review)} - {""})  # where the formats conflict
    measured = {est: _curve(analyze_run(run_dir, n_per_group=int(c.preflight_prompts), last_layers=int(lab.model.num_layers), estimator=est,
                                        split_tokens=seps if est == chosen else ()))
                for est in (chosen, *(e for e in ESTIMATORS if e != chosen))}
    others = {est: {"cos": mean_cos(curve), "curve": curve} for est, curve in measured.items() if est != chosen}
    return {**verdict(measured[chosen], float(c.preflight_max_cos)), "estimator": chosen, "other_estimators": others,
            "steps": int(c.preflight_steps), "prompts_per_group": int(c.preflight_prompts), "layers": int(lab.model.num_layers)}


def _curve(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Per checkpoint: the two groups' cosine, dot product, split-half cosines, effective rollouts
    and the cosine on the separator tokens alone (``alignment_by_tokens``)."""
    groups = ("general", "domain")
    out = []
    for ck in result["checkpoints"]:
        point = {"step": ck["step"], **{k: ck["alignment"][k] for k in ("cos", "dot", "half_a", "half_b")},
                 "effective_n": [ck["concentration_by_group"][g]["effective_n"] for g in groups]}
        if "alignment_by_tokens" in ck:
            point["cos_separators"] = ck["alignment_by_tokens"]["split"]["cos"]
        out.append(point)
    return out


def _after_step0(curve: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The checkpoints after step 0 (all of them when there are none): at step 0 the student is
    the domain teacher, so the preservation gradient is exactly zero."""
    return [p for p in curve if p["step"] > 0] or curve


def mean_cos(curve: list[dict[str, Any]]) -> float:
    """The pre-flight's statistic: the mean cosine over the checkpoints after step 0."""
    measured = _after_step0(curve)
    return sum(p["cos"] for p in measured) / len(measured)


def verdict(curve: list[dict[str, Any]], threshold: float) -> dict[str, Any]:
    """Ready or not from the per-checkpoint cosines (``[{"step", "cos", ...}]``): their mean over
    the checkpoints after step 0 must be below ``threshold``; says so loudly when it is not."""
    measured = _after_step0(curve)
    mean = mean_cos(curve)
    ready = mean < threshold
    each = ", ".join(f"{p['cos']:+.3f} @ {p['step']}" for p in measured)
    if not ready:
        log.warning("CaMOPD SCENARIO NOT READY: mean cos(recovery, preservation gradients) = %+.3f (%s), not below %s -- "
                    "recovery and preservation do not counteract here, so a CaMOPD comparison on it says nothing about the method; "
                    "change the scenario (lab.camopd), not the threshold", mean, each, threshold)
    else:
        log.info("CaMOPD scenario pre-flight: mean cos(recovery, preservation gradients) = %+.3f (%s) < %s", mean, each, threshold)
    return {"cos": mean, "cos_last": curve[-1]["cos"], "ready": ready, "threshold": threshold, "curve": curve}
