"""OPCoD's teacher diagnostics over training, per arm of a comparison: what a collapsing teacher looks like.

Run on a ``compare`` folder of OPCoD arms (e.g. ``--scenario opcod_teachers``)::

    python benchmarks/opcod_diagnostics.py runs/opcod_teachers_s0 [--window 10]
    python benchmarks/opcod_diagnostics.py runs/opcod_v2_tutor_table --arms "opcod[strategy.use_solution=true]" ... [--out DIR]

Without ``--arms`` every run folder is its own line (one seed per arm); with ``--arms`` each
arm's finished seeds are averaged per peer and window (``seeds`` says how many), since one
seed of a 5-seed comparison is an anecdote.

For each run and peer, the means over windows of ``--window`` steps of what the
loop logs (``mopdx.codistill.module``): the teacher's per-token entropy and its
probability of stopping early (``teacher_eos_early``), its greedy accuracy
reading its context (``teacher_acc``), the peer's own rollout accuracy (mean
over domains, and per domain: a teacher that costs a strong domain shows there first),
the rollouts' length, the flip rate, the loss, and the feedback *to* the peer: its gate rate and
the share of it that held the answer (what the anchoring-off control is read by).  Prints one table, writes
``opcod_diagnostics.json`` and ``opcod_diagnostics.png`` (one panel per diagnostic,
one line per arm and peer) into the folder (or ``--out``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from mopdx.experiments.methods import finished_runs  # noqa: E402

COLUMNS = ["teacher_entropy", "teacher_eos_early", "teacher_acc", "rollout_acc", "completion_len", "flip_rate", "loss",
           "feedback_gated", "feedback_leaked"]


def run_diagnostics(run: Path, window: int, arm: str | None = None) -> pd.DataFrame:
    """One run's diagnostics per peer and step window (long format); ``arm`` names its lines
    (default: the folder's name)."""
    metrics = pd.read_csv(run / "logs" / "metrics.csv")
    peers = sorted({c.split("/")[0] for c in metrics.columns if c.endswith("/teacher_entropy")})
    frames = []
    for peer in peers:
        acc_cols = [c for c in metrics.columns if c.startswith(f"{peer}/rollout_acc_")]
        rows = metrics[metrics[f"{peer}/loss"].notna()].copy()
        out = pd.DataFrame({"step": rows["step"], "window": (rows["step"] // window) * window})
        for col in COLUMNS:
            out[col] = rows[acc_cols].mean(axis=1) if col == "rollout_acc" else rows.get(f"{peer}/{col}")
        per_domain = [c.split("/", 1)[1] for c in acc_cols]
        for col, name in zip(acc_cols, per_domain):
            out[name] = rows[col]
        frame = out.groupby("window")[[*COLUMNS, *per_domain]].mean().reset_index()
        frame.insert(0, "peer", peer)
        frame.insert(0, "arm", arm or run.name.removesuffix("-seed0"))
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def arm_diagnostics(folder: Path, arm: str, window: int) -> pd.DataFrame:
    """An arm's diagnostics per peer and window, the mean over its finished seeds."""
    runs = finished_runs(folder, arm)
    if not runs:
        raise SystemExit(f"no finished run of {arm!r} under {folder}")
    per_seed = pd.concat([run_diagnostics(r, window, arm) for r in runs.values()], ignore_index=True)
    table = per_seed.groupby(["arm", "peer", "window"], sort=False).mean(numeric_only=True).reset_index()
    table.insert(3, "seeds", len(runs))
    return table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--window", type=int, default=10)
    ap.add_argument("--arms", nargs="+", help="arms of a comparison, each averaged over its seeds")
    ap.add_argument("--out", type=Path, help="where to write the JSON and plot (default: the folder)")
    args = ap.parse_args()
    if args.arms:
        table = pd.concat([arm_diagnostics(args.folder, a, args.window) for a in args.arms], ignore_index=True)
    else:
        runs = sorted(p for p in args.folder.iterdir() if (p / "logs" / "metrics.csv").is_file())
        if not runs:
            raise SystemExit(f"no run with logs/metrics.csv under {args.folder}")
        table = pd.concat([run_diagnostics(r, args.window) for r in runs], ignore_index=True)
    out = args.out or args.folder
    out.mkdir(parents=True, exist_ok=True)
    pd.set_option("display.width", 250)
    print(table.to_markdown(index=False, floatfmt=".3f"))
    (out / "opcod_diagnostics.json").write_text(json.dumps(table.to_dict(orient="records"), indent=1))
    shown = [c for c in COLUMNS if table[c].notna().any()]  # runs from before a diagnostic existed lack it
    fig, axes = plt.subplots(2, (len(shown) + 1) // 2, figsize=(4.5 * ((len(shown) + 1) // 2), 7), squeeze=False)
    for ax in axes.flat[len(shown):]:
        ax.axis("off")
    for ax, col in zip(axes.flat, shown):
        for (arm, peer), g in table.groupby(["arm", "peer"]):
            ax.plot(g["window"], g[col], marker="o", ms=3, label=f"{arm} {peer}")
        ax.set_title(col)
        ax.set_xlabel("step")
    axes.flat[0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out / "opcod_diagnostics.png", dpi=110)
    print(f"wrote {out / 'opcod_diagnostics.json'} and .png")


if __name__ == "__main__":
    main()
