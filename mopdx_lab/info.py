"""``python -m mopdx lab build|info``: build the lab (and the scenario a config names) and print what it holds.

Why here and not in the CLI: what is worth printing -- per-model accuracy, the
papers'-regime check, a scenario's pre-flight check -- is the lab's business;
the CLI only parses the command line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from mopdx_lab.build import build_lab, lab_dir, read_manifest
from mopdx.tables import domain_table


def lab_command(cfg: DictConfig, action: str, force: bool = False, progress: bool = True) -> None:
    """``build``: run the missing stages (and build every ``lab:`` scenario artifact the config
    names, e.g. ``--strategy camopd``); then, for both actions, print the manifest."""
    if action == "build":
        root = build_lab(cfg.lab, force=force, progress=progress)
        print(f"lab ready: {root}")
        build_scenario_refs(cfg)
    manifest = read_manifest(cfg.lab)
    if not manifest:
        print(f"no lab built yet at {lab_dir(cfg.lab)}; run `python -m mopdx lab build`")
        return
    print(domain_table(manifest["accuracy"], list(cfg.lab.domains), title=f"accuracy ({decoding(manifest.get('eval', {}))})"))
    regime = manifest.get("regime")
    if regime:
        rows = {k: {d: r[k] for d, r in regime["domains"].items()} for k in ("kl", "student", "teacher", "gap")}
        b = regime["bounds"]
        print(f"\nthe papers' regime (initial KL in [{b['kl_min']}, {b['kl_max']}], gap >= {b['min_gap']}, student >= {b['min_student']}): "
              + ("IN" if regime["in_regime"] else "OUTSIDE -- see the warnings above"))
        print(domain_table(rows, list(cfg.lab.domains), title="regime"))
    if manifest.get("targets"):
        print("\n" + build_story(manifest["targets"]))
    print_camopd(cfg)
    print_opcod(cfg)


def _figures(acc: dict[str, float] | None) -> str:
    return ", ".join(f"{d} {a:.2f}" for d, a in sorted((acc or {}).items()))


def build_story(targets: dict[str, Any]) -> str:
    """How each stage of the build stopped, in one line per artifact (``manifest.json``'s ``targets``)."""
    lines = []
    s1 = targets.get("stage1") or {}
    t = s1.get("targets") or {}
    if t.get("closed_loop"):
        lines.append(f"stage1: clean {s1.get('steps')} steps (greedy {_figures(s1.get('greedy'))}; target >= {t.get('learned')}), "
                     f"noisy {s1.get('noisy_steps')} steps (sampled {_figures(s1.get('sampled'))}; target: twice in {t.get('student_band')})")
    elif s1:
        lines.append(f"stage1: open loop, clean {s1.get('steps')} steps, noisy {s1.get('noisy_steps', 0)} steps (fixed budgets)")
    for name, rec in targets.items():
        if name == "stage1" or not rec:
            continue
        t = rec.get("targets") or {}
        last = (t.get("checks") or [{}])[-1]
        if t.get("closed_loop"):
            lines.append(f"{name}: {rec.get('rounds')} RFT round(s), check accuracy {last.get('teacher', float('nan')):.2f} against Stage 1's "
                         f"{t.get('student', float('nan')):.2f}, KL {last.get('kl', float('nan')):.3f}")
        elif "rounds" in rec:
            lines.append(f"{name}: {rec['rounds']} RFT round(s) (fixed budget)")
    missed = [f"{name}: {(rec.get('targets') or {}).get('missed')}" for name, rec in targets.items() if rec and (rec.get("targets") or {}).get("missed")]
    head = "how the build stopped (check prompts, data/check.jsonl):" if lines else ""
    return "\n".join([head, *("  " + line for line in lines), *("  MISSED " + m for m in missed)]).strip()


def decoding(ev: dict[str, Any]) -> str:
    """How the build's accuracies were decoded, in words."""
    return "greedy" if ev.get("greedy") else f"avg@{ev.get('samples', '?')}, T={ev.get('temperature', '?')}"


def build_scenario_refs(cfg: DictConfig) -> None:
    """Resolve (so build) every scenario ``lab:`` reference of the config's models and data."""
    from mopdx.plugins import resolve_ref

    refs = [cfg.model.student, *cfg.model.teachers.values(), cfg.data.train, cfg.data.eval]
    for ref in dict.fromkeys(str(r) for r in refs):
        if ref.startswith(("lab:camopd/", "lab:opcod/")):
            print(f"{ref}: {resolve_ref(ref, cfg)}")


def scenario_manifest(title: str, strategy: str, folder: Path) -> dict[str, Any] | None:
    """A built scenario's manifest, after a heading line; None (and how to build it) when not built."""
    path = folder / "manifest.json"
    if not path.is_file():
        print(f"\n{title} scenario not built yet ({folder}); run `python -m mopdx lab build --strategy {strategy}`")
        return None
    print(f"\n{title} scenario ({folder}):")
    return json.loads(path.read_text())


def print_camopd(cfg: DictConfig) -> None:
    """The CaMOPD scenario's accuracies and pre-flight check, when this config uses a built one."""
    if not str(cfg.model.student).startswith("lab:camopd/"):
        return
    from mopdx_lab.camopd import scenario_dir

    m = scenario_manifest("CaMOPD", "camopd", scenario_dir(cfg.lab, lab_dir(cfg.lab)))
    if m is None:
        return
    print(domain_table(m["accuracy"], [*m["recovery_domains"], m["review_domain"]], title="accuracy"))
    pre = m.get("preflight")
    if pre:
        curve = ", ".join(f"step {c['step']}: {c['cos']:+.3f}" for c in pre["curve"])
        print(f"pre-flight cos(recovery, preservation gradients) under mixed MOPD ({pre.get('estimator', 'sampled')} estimator): {curve}; mean {pre['cos']:+.3f} -> "
              + ("READY" if pre["ready"] else f"NOT READY (needs a mean < {pre['threshold']})"))
        if all("half_a" in c for c in pre["curve"]):  # near 0: that group's mean gradient is sampling noise
            halves = ", ".join(f"step {c['step']}: {c['half_a']:+.2f} / {c['half_b']:+.2f}" for c in pre["curve"])
            print(f"  split-half cos of each mean gradient (recovery / preservation): {halves}")
        if all("cos_separators" in c for c in pre["curve"]):
            seps = ", ".join(f"step {c['step']}: {c['cos_separators']:+.3f}" for c in pre["curve"])
            print(f"  on the separator tokens alone: {seps}")
        if all("effective_n" in c for c in pre["curve"]):  # ~1: one rollout is the group's "mean" gradient
            eff = ", ".join(f"step {c['step']}: {c['effective_n'][0]:.1f} / {c['effective_n'][1]:.1f}" for c in pre["curve"])
            print(f"  effective rollouts carrying each mean gradient, of {pre['prompts_per_group']} (recovery / preservation): {eff}")
        for est, other in pre.get("other_estimators", {}).items():
            curve = ", ".join(f"step {c['step']}: {c['cos']:+.3f}" for c in other["curve"])
            eff = ", ".join(f"{c['effective_n'][0]:.1f} / {c['effective_n'][1]:.1f}" for c in other["curve"])
            print(f"  with the {est} estimator (not the verdict's): {curve}; mean {other['cos']:+.3f}; effective rollouts {eff}")
    if m.get("initial_kl"):
        kl = ", ".join(f"{d} {v:.3f}" for d, v in m["initial_kl"].items())
        print(f"specialist -> general teacher per-token KL (nats): {kl}")


def print_opcod(cfg: DictConfig) -> None:
    """The OPCoD scenario's accuracies and pre-flight check, when this config uses a built one."""
    peers = [str(r) for r in cfg.get("codistill", {}).get("peers", {}).values()]
    if not any(r.startswith("lab:opcod/") for r in peers):
        return
    from mopdx_lab.opcod import SHOWN, scenario_dir
    from mopdx_lab.opcod_preflight import preflight_table

    folder = scenario_dir(cfg.lab, lab_dir(cfg.lab))
    m = scenario_manifest("OPCoD", "opcod", folder)
    if m is None:
        return
    print(domain_table(m["accuracy"], list(m["domains"]), title="accuracy"))
    if m.get("preflight"):
        print("pre-flight: as printed above, by the build" if folder.resolve() in SHOWN else preflight_table(m["preflight"]))
