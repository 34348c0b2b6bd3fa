"""OPCoD's teacher diagnostics over training, per arm of a comparison: what a collapsing teacher looks like.

Run on a ``compare`` folder of OPCoD arms (e.g. ``--scenario opcod_teachers``)::

    python benchmarks/opcod_diagnostics.py runs/opcod_teachers_s0 [--window 10]

For each run and peer, the means over windows of ``--window`` steps of what the
loop logs (``mopdx.codistill.module``): the teacher's per-token entropy and its
probability of stopping early (``teacher_eos_early``), its greedy accuracy
reading its context (``teacher_acc``), the peer's own rollout accuracy (mean
over domains), the rollouts' length, the flip rate and the loss.  Prints one
table, writes ``opcod_diagnostics.json`` and ``opcod_diagnostics.png`` (one
panel per diagnostic, one line per arm and peer) into the folder.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

COLUMNS = ["teacher_entropy", "teacher_eos_early", "teacher_acc", "rollout_acc", "completion_len", "flip_rate", "loss"]


def run_diagnostics(run: Path, window: int) -> pd.DataFrame:
    """One run's diagnostics per peer and step window (long format)."""
    metrics = pd.read_csv(run / "logs" / "metrics.csv")
    peers = sorted({c.split("/")[0] for c in metrics.columns if c.endswith("/teacher_entropy")})
    frames = []
    for peer in peers:
        acc_cols = [c for c in metrics.columns if c.startswith(f"{peer}/rollout_acc_")]
        rows = metrics[metrics[f"{peer}/loss"].notna()].copy()
        out = pd.DataFrame({"step": rows["step"], "window": (rows["step"] // window) * window})
        for col in COLUMNS:
            out[col] = rows[acc_cols].mean(axis=1) if col == "rollout_acc" else rows.get(f"{peer}/{col}")
        frame = out.groupby("window")[COLUMNS].mean().reset_index()
        frame.insert(0, "peer", peer)
        frame.insert(0, "arm", run.name.removesuffix("-seed0"))
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--window", type=int, default=10)
    args = ap.parse_args()
    runs = sorted(p for p in args.folder.iterdir() if (p / "logs" / "metrics.csv").is_file())
    if not runs:
        raise SystemExit(f"no run with logs/metrics.csv under {args.folder}")
    table = pd.concat([run_diagnostics(r, args.window) for r in runs], ignore_index=True)
    pd.set_option("display.width", 250)
    print(table.to_markdown(index=False, floatfmt=".3f"))
    (args.folder / "opcod_diagnostics.json").write_text(json.dumps(table.to_dict(orient="records"), indent=1))
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
    fig.savefig(args.folder / "opcod_diagnostics.png", dpi=110)
    print(f"wrote {args.folder / 'opcod_diagnostics.json'} and .png")


if __name__ == "__main__":
    main()
