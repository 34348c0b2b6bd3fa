"""mopdx vs TRL's on-policy distillation, same model, teacher, prompts and batch.

Run::

    pip install -e ".[bench]"          # TRL is a benchmark-only extra
    python benchmarks/vs_trl.py --batch 32 --steps 8

TRL side: ``trl.DistillationTrainer`` with ``beta=1.0`` (reverse KL over the full
vocabulary), on-policy generation by the student (TRL's successor to
``GKDTrainer(lmbda=1)``). mopdx side: ``fit`` with ``loss.kind=full_reverse_kl``,
the same quantity. The student is the lab's Stage-1 model, the teacher the lab's
``sort`` specialist, the prompts are ``sort`` training prompts, and both use
temperature 1, ``--max-new-tokens``, AdamW at lr 1e-5 and no warm-up.
Each side runs in its own subprocess, so its peak memory is its own.

Prints step time (median after ``--warmup`` steps), completion tokens/s,
peak memory (RSS on CPU, allocated on CUDA), the time split of a mopdx step,
the ratio TRL / mopdx, and a check that both losses agree on the same inputs.
Writes ``benchmarks/results/vs_trl-<device>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _lab() -> tuple[str, str, list[str]]:
    from mopdx.config import load_config
    from mopdx.data import load_prompts
    from mopdx.plugins import resolve_ref

    cfg = load_config("mopd", [], [])
    domain = str(cfg.lab.domains[-1])
    prompts = [e.prompt for e in load_prompts(resolve_ref("lab:train", cfg)) if e.domain == domain]
    return resolve_ref("lab:stage1", cfg), resolve_ref(f"lab:teacher/{domain}", cfg), prompts


def _peak_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_trl(args: argparse.Namespace) -> dict[str, Any]:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import DistillationConfig, DistillationTrainer

    from mopdx.models import load_model, load_tokenizer

    student_dir, teacher_dir, prompts = _lab()
    tok = load_tokenizer(student_dir)
    tok.padding_side = "left"
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": p}]} for p in prompts[: args.batch * (args.steps + args.warmup)]])
    times: list[float] = []
    gen: list[float] = []
    lengths: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, *a: Any, **k: Any) -> None:
            self.t = time.perf_counter()

        def on_step_end(self, *a: Any, **k: Any) -> None:
            times.append(time.perf_counter() - self.t)

        def on_log(self, _args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **k: Any) -> None:
            if logs and "completions/mean_length" in logs:
                lengths.append(logs["completions/mean_length"])

    with tempfile.TemporaryDirectory() as out:
        cfg = DistillationConfig(
            output_dir=out, per_device_train_batch_size=args.batch, max_steps=args.steps + args.warmup, learning_rate=1e-5,
            lr_scheduler_type="constant", warmup_steps=0, beta=1.0, temperature=1.0, max_completion_length=args.max_new_tokens,
            logging_steps=1, report_to=[], save_strategy="no", use_cpu=not torch.cuda.is_available(), bf16=False, seed=0,
            dataloader_num_workers=0, disable_dropout=True,
        )
        trainer = DistillationTrainer(
            model=load_model(student_dir), teacher_model=load_model(teacher_dir), args=cfg, train_dataset=data, processing_class=tok, callbacks=[Timer()],
        )
        original = trainer._generate

        def timed_generate(*a: Any, **k: Any) -> Any:
            t = time.perf_counter()
            try:
                return original(*a, **k)
            finally:
                gen.append(time.perf_counter() - t)

        trainer._generate = timed_generate  # type: ignore[method-assign]
        trainer.train()
    steady = times[args.warmup :]
    tokens = statistics.mean(lengths[args.warmup :] or lengths) * args.batch if lengths else float("nan")
    return {"side": "trl", "step_s": statistics.median(steady), "tokens_per_step": tokens, "tok_s": tokens / statistics.median(steady),
            "generate_s": statistics.median(gen[args.warmup :] or gen), "peak_mb": _peak_mb()}


def run_mopdx(args: argparse.Namespace) -> dict[str, Any]:
    import pytorch_lightning as pl

    from mopdx.config import load_config
    from mopdx.run.fit import fit

    times: list[float] = []
    split: list[dict[str, float]] = []

    class Timer(pl.Callback):
        def on_train_batch_start(self, *a: Any) -> None:
            self.t = time.perf_counter()

        def on_train_batch_end(self, trainer: pl.Trainer, module: Any, *a: Any) -> None:
            times.append(time.perf_counter() - self.t)
            s = {k: float(v) for k, v in trainer.callback_metrics.items()}  # this step's logged values
            split.append({"sample_s": s["time/sample_s"], "prefill_s": s["time/prefill_s"], "train_fwd_s": s["time/train_fwd_s"],
                          "tokens": s["train/completion_len"] * args.batch})

    with tempfile.TemporaryDirectory() as out:
        cfg = load_config("mopd", [], [
            f"run.out_dir={out}", "run.name=b", "model.teachers.add=lab:teacher/sort", "model.teachers.reverse=lab:teacher/sort",
            "data.domain_ratios.sort=1", f"data.batch_size={args.batch}", f"rollout.max_new_tokens={args.max_new_tokens}", "loss.kind=full_reverse_kl",
            "optim.lr=1e-5", "optim.warmup_steps=0", "optim.schedule=constant", f"train.max_steps={args.steps + args.warmup}", "train.eval_every=0",
            "train.ckpt_every=0", "data.eval_per_domain=1", "train.log_every=1",
        ])
        fit(cfg, progress=False, callbacks=[Timer()])
    steady, parts = times[args.warmup :], split[args.warmup :]
    tokens = statistics.mean(p["tokens"] for p in parts)
    return {"side": "mopdx", "step_s": statistics.median(steady), "tokens_per_step": tokens, "tok_s": tokens / statistics.median(steady),
            "generate_s": statistics.median(p["sample_s"] for p in parts), "prefill_s": statistics.median(p["prefill_s"] for p in parts),
            "train_fwd_s": statistics.median(p["train_fwd_s"] for p in parts), "peak_mb": _peak_mb()}


def loss_agreement() -> dict[str, float]:
    """Both implementations on the same logits: reverse KL (beta=1) and JSD (beta=0.5)."""
    from trl.experimental.gkd import GKDTrainer

    from mopdx import losses

    torch.manual_seed(0)
    s, t = torch.randn(4, 7, 50), torch.randn(4, 7, 50)
    labels = torch.ones(4, 7, dtype=torch.long)  # equal lengths: token mean == sequence mean
    mask = torch.ones(4, 7)
    ls, lt = torch.log_softmax(s, -1), torch.log_softmax(t, -1)
    out = {}
    for beta, ours in ((1.0, losses.full_reverse_kl(ls, lt, mask)), (0.5, losses.generalized_jsd(ls, lt, mask, 0.5)), (0.0, losses.forward_kl(ls, lt, mask))):
        theirs = GKDTrainer.generalized_jsd_loss(s, t, labels=labels, beta=beta)
        out[f"beta={beta}"] = float((ours - theirs).abs())
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--only", choices=["trl", "mopdx"], default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")
    if args.only:
        print(json.dumps(run_trl(args) if args.only == "trl" else run_mopdx(args)))
        return 0
    results = {}
    for side in ("mopdx", "trl"):
        cmd = [sys.executable, __file__, "--only", side, "--batch", str(args.batch), "--steps", str(args.steps), "--warmup", str(args.warmup), "--max-new-tokens", str(args.max_new_tokens)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            return 1
        results[side] = json.loads(proc.stdout.strip().splitlines()[-1])
    agree = loss_agreement()
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores)"
    m, t = results["mopdx"], results["trl"]
    print(f"\ndevice: {device}  batch: {args.batch}  max_new_tokens: {args.max_new_tokens}  steps: {args.steps} (+{args.warmup} warm-up)\n")
    print("| | step s (median) | completion tok/s | generate s | peak memory MB |")
    print("|---|---|---|---|---|")
    for r in (m, t):
        print(f"| {r['side']} | {r['step_s']:.3f} | {r['tok_s']:.0f} | {r['generate_s']:.3f} | {r['peak_mb']:.0f} |")
    ratio = t["step_s"] / m["step_s"]
    print(f"\nTRL step time / mopdx step time: {ratio:.2f}x")
    print(f"mopdx step split: sample {m['generate_s']:.3f}s, teacher prefill {m['prefill_s']:.3f}s, student fwd+loss {m['train_fwd_s']:.3f}s "
          f"(rest: backward + optimiser {m['step_s'] - m['generate_s'] - m['prefill_s'] - m['train_fwd_s']:.3f}s)")
    print(f"TRL step: generate {t['generate_s']:.3f}s of {t['step_s']:.3f}s")
    print(f"loss agreement on the same logits (|mopdx - TRL|): {agree}")
    out = ROOT / "benchmarks" / "results" / f"vs_trl-{'cuda' if torch.cuda.is_available() else 'cpu'}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"device": device, "args": vars(args), "mopdx": m, "trl": t, "trl_over_mopdx_step_time": ratio, "loss_agreement": agree}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
