"""Does the lab hold beyond one machine? Command 1 on several lab builds, and the band of its headline.

Why: a tiny model's Stage 1 is chaotic in float rounding, so another CPU builds
another lab (issue 37).  No one here can run another CPU, so this varies what
another machine varies: the seed of the build's data order and init
(``lab.seed``) and the thread count of its float sums (``lab.threads``, with
``train.threads`` to match).  Each build runs README command 1 verbatim plus
those overrides, in a subprocess, as a user would.  Per build the table gives
Stage 1's clean and noisy steps, per-domain student / teacher accuracy and KL
from the regime check (``lab info``), RFT rounds, command 1's normalised scores
and whether every target was reached; then the band of the mean normalised
score over the builds: mean, 95% CI (Student's t) and range.

Usage::

    python benchmarks/lab_builds.py --seeds 0 1 2 3 4 --threads 2 --extra 0:1 --out benchmarks/results/lab_builds

``--extra SEED:THREADS`` adds single builds.  A build whose run folder already
holds ``summary.json`` is read, not run again, so a killed sweep resumes.
Prints one table and writes ``lab_builds.json`` (and ``lab_builds.md``) into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from mopdx.config import load_config
from mopdx.experiments.compare import mean_ci
from mopdx_lab.build import lab_dir
from mopdx.tables import records_table

COMMAND_1 = [sys.executable, "-m", "mopdx", "fit", "--strategy", "mopd"]


def overrides(seed: int, threads: int) -> list[str]:
    return [f"lab.seed={seed}", f"lab.threads={threads}", f"train.threads={threads}"]


def run_build(seed: int, threads: int, runs: Path, log_dir: Path) -> dict[str, Any]:
    """Command 1 with this build's overrides (unless its run is already finished); the row of the table."""
    name = f"lab_seed{seed}_t{threads}"
    over = overrides(seed, threads)
    run_dir = runs / name
    wall = None
    if not (run_dir / "summary.json").is_file():
        t0 = time.perf_counter()
        with open(log_dir / f"{name}.log", "w") as log:
            proc = subprocess.run([*COMMAND_1, *over, f"run.out_dir={runs}", f"run.name={name}", "--quiet"], stdout=log, stderr=subprocess.STDOUT)
        wall = round(time.perf_counter() - t0, 1)
        if proc.returncode != 0:
            tail = (log_dir / f"{name}.log").read_text().strip().splitlines()[-1:]
            return {"build": name, "seed": seed, "threads": threads, "exit": proc.returncode, "error": tail[0] if tail else "", "wall_s": wall}
    return row(seed, threads, name, run_dir, wall)


def row(seed: int, threads: int, name: str, run_dir: Path, wall: float | None) -> dict[str, Any]:
    cfg = load_config("mopd", [], overrides(seed, threads))
    lab = lab_dir(cfg.lab)
    manifest = json.loads((lab / "manifest.json").read_text())
    stage1 = json.loads((lab / "models" / "stage1" / "lab_info.json").read_text())
    summary = json.loads((run_dir / "summary.json").read_text())
    out: dict[str, Any] = {"build": name, "seed": seed, "threads": threads, "lab": lab.name, "exit": 0,
                           "stage1_clean": stage1.get("steps"), "stage1_noisy": stage1.get("noisy_steps"),
                           "in_regime": manifest["regime"]["in_regime"]}
    for d, r in manifest["regime"]["domains"].items():
        teacher = json.loads((lab / "models" / "teacher" / d / "lab_info.json").read_text())
        out.update({f"{d}_student": r["student"], f"{d}_teacher": r["teacher"], f"{d}_kl": round(r["kl"], 3), f"{d}_rounds": teacher.get("rounds")})
    norm = summary["normalised"]
    for d in cfg.lab.domains:
        out[f"{d}_norm"] = norm[d]
    out["mean_norm"] = norm["mean"]
    out["lab_s"] = round(sum(manifest["timings_s"].values()), 1)
    out["wall_s"] = wall
    return out


def cpu_name() -> str:
    """The CPU model: the same recipe builds another lab on another CPU, so a band names its machine."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def band(rows: list[dict[str, Any]]) -> dict[str, Any]:
    scores = [r["mean_norm"] for r in rows if r.get("exit") == 0]
    mean, half = mean_ci(scores)
    return {"builds": len(rows), "in_regime": sum(bool(r.get("in_regime")) for r in rows), "mean": mean, "ci95": half,
            "min": min(scores) if scores else None, "max": max(scores) if scores else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--extra", nargs="*", default=["0:1"], help="SEED:THREADS builds beside the seed sweep")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/lab_builds"))
    ap.add_argument("--runs", type=Path, default=Path("runs/lab_builds"))
    args = ap.parse_args()
    builds = [(s, args.threads) for s in args.seeds] + [tuple(int(x) for x in e.split(":")) for e in args.extra]
    args.out.mkdir(parents=True, exist_ok=True)
    args.runs.mkdir(parents=True, exist_ok=True)
    rows = []
    for seed, threads in builds:
        rows.append(run_build(seed, threads, args.runs, args.out))
        print(f"{rows[-1]['build']}: " + ("mean normalised %.3f" % rows[-1]["mean_norm"] if rows[-1]["exit"] == 0 else rows[-1]["error"]), flush=True)
    result = {"builds": rows, "band": band(rows), "command": " ".join(COMMAND_1[1:]), "cpu": cpu_name(), "cores": os.cpu_count()}
    (args.out / "lab_builds.json").write_text(json.dumps(result, indent=2))
    b = result["band"]
    text = (records_table(rows) + f"\n\nmean normalised score over {b['builds']} builds ({b['in_regime']} in the regime): "
            f"{b['mean']:.3f} ± {b['ci95']:.3f} (95% CI), range [{b['min']:.3f}, {b['max']:.3f}]\n")
    (args.out / "lab_builds.md").write_text(text)
    print(f"{result['cpu']} ({result['cores']} cores)\n" + text)


if __name__ == "__main__":
    main()
