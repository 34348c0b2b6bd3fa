"""Peak memory and time of one training step, naive vs chunked student log-probs, on a real vocabulary.

Run (CPU: a random Qwen2 with Qwen's vocabulary, V = 151,936, and a small hidden size)::

    python benchmarks/memory.py                                  # pg and topk, C = 256 and 1024
    python benchmarks/memory.py --kinds pg topk full_reverse_kl --lengths 256
    python benchmarks/memory.py --shape 0.5b --dtype bfloat16    # on a GPU: Qwen2-0.5B's shape

One step = the student's forward over [prompt | completion] (batch 8), the
configured loss (``mopdx.student_loss`` with ``loss.chunk_tokens``; 0 is the
naive full ``[B, C, V]`` float32 log-softmax), backward and an AdamW step.
Peak memory is what the step adds on top of what was resident before it: on
CUDA ``max_memory_allocated``, on CPU the process's peak RSS (each case then
runs in its own process, since that peak only grows).  A case that runs out of
memory is reported as such.  ``--liger`` (CUDA) adds Liger-Kernel's fused linear
cross-entropy on the same shapes as a reference: it is the SFT loss, not one of
mopdx's (see README, "Memory").  Prints a table and writes JSON
(``benchmarks/results/memory-<device>.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mopdx import losses  # noqa: E402
from mopdx.backends.base import Rollouts, TeacherOutput  # noqa: E402
from mopdx.models import DTYPES  # noqa: E402
from mopdx.student_loss import completion_hidden, student_loss  # noqa: E402

SHAPES = {
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128),
    "0.5b": dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2, intermediate_size=4864),
}
QWEN_VOCAB = 151_936


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


_MODELS: dict[tuple[str, str], Any] = {}


def make_model(args: argparse.Namespace, device: str) -> Any:
    """The random student, built once per process (directly on ``device``: a 0.6B init on
    the CPU would take longer than the benchmark)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    key = (device, args.dtype)
    if key not in _MODELS:
        torch.manual_seed(0)
        cfg = Qwen2Config(vocab_size=args.vocab, max_position_embeddings=args.prompt_len + max(args.lengths) + 8, tie_word_embeddings=False, **SHAPES[args.shape])
        with torch.device(device):
            _MODELS[key] = Qwen2ForCausalLM(cfg).to(dtype=DTYPES[args.dtype]).train()
    return _MODELS[key]


def make_batch(args: argparse.Namespace, length: int, kind: str, device: str) -> tuple[Rollouts, losses.LossBatch, losses.LossSpec]:
    """Random rollouts of ``length`` completion tokens (no padding) and a random teacher of ``kind``'s needs."""
    b, p, c = args.batch, args.prompt_len, length
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, args.vocab, (b, p + c), generator=g)
    r = Rollouts(ids, torch.ones_like(ids), p, torch.ones(b, c), -torch.rand(b, c, generator=g) * 3, ["d"] * b, torch.arange(b)).to(device)
    spec = losses.LossSpec(kind=kind, topk=args.topk)
    teacher = TeacherOutput(-torch.rand(b, c, device=device) * 3)
    if spec.entry.needs == "topk":
        teacher.topk_ids = torch.randint(0, args.vocab, (b, c, args.topk), device=device)
        teacher.topk_logps = -torch.rand(b, c, args.topk, device=device) * 5 - 1
    if spec.entry.needs == "full":
        teacher.full_logps = torch.log_softmax(torch.randn(b, c, args.vocab, device=device), dim=-1)
    return r, losses.LossBatch.of(r, teacher), spec


def liger_step(model: Any, r: Rollouts) -> torch.Tensor:
    """Reference: Liger's fused linear cross-entropy of the sampled tokens (the SFT loss)."""
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

    h = completion_hidden(model, r.input_ids, r.attention_mask, r.prompt_len)
    return LigerFusedLinearCrossEntropyLoss()(model.lm_head.weight, h.reshape(-1, h.shape[-1]), r.completion_ids.reshape(-1))


def run_case(args: argparse.Namespace, length: int, kind: str, impl: str) -> dict[str, Any]:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = make_model(args, device)
    r, batch, spec = make_batch(args, length, kind, device)
    model.zero_grad(set_to_none=True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)

    def step() -> None:
        loss = liger_step(model, r) if impl == "liger" else student_loss(model, r, batch, spec, 0 if impl == "naive" else args.chunk_tokens)[0]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=False)  # keep the grads and AdamW state resident: the peak is the step's own

    # one step to allocate AdamW's state and the gradients, so the peak below is the step's
    # transient memory (activations, logits, their gradients), the same for every impl
    step()
    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        base_rss = rss_mib()
    times = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        step()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20 if device == "cuda" else peak_rss_mib() - base_rss
    return {"kind": kind, "completion_len": length, "impl": impl, "peak_mib": peak, "step_s": statistics.median(times)}


def isolated(args: argparse.Namespace, length: int, kind: str, impl: str) -> dict[str, Any]:
    """One case in a fresh process (a CPU process's peak RSS only grows); OOM reported, not raised."""
    cmd = [sys.executable, __file__, "--only", f"{length},{kind},{impl}"]
    for flag in ("shape", "vocab", "batch", "prompt_len", "topk", "chunk_tokens", "dtype", "repeats"):
        cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        oom = proc.returncode in (-9, 137) or "out of memory" in proc.stderr.lower()
        print(proc.stderr[-1500:], file=sys.stderr) if not oom else None
        return {"kind": kind, "completion_len": length, "impl": impl, "peak_mib": None, "step_s": None, "error": "out of memory" if oom else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    p.add_argument("--vocab", type=int, default=QWEN_VOCAB)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--lengths", type=int, nargs="+", default=[256, 1024])
    p.add_argument("--kinds", nargs="+", default=["pg", "topk"], choices=losses.LOSS_KINDS)
    p.add_argument("--topk", type=int, default=64)
    p.add_argument("--chunk-tokens", type=int, default=1024)
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--liger", action="store_true", help="add Liger-Kernel's fused linear cross-entropy as a reference (CUDA)")
    p.add_argument("--out", default=None)
    p.add_argument("--only", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.only:
        length, kind, impl = args.only.split(",")
        print(json.dumps(run_case(args, int(length), kind, impl)))
        return 0
    cuda = torch.cuda.is_available()
    cases = [(n, k, impl) for n in args.lengths for k in args.kinds for impl in ("naive", "chunked")]
    if args.liger:
        cases += [(n, "pg", "liger") for n in args.lengths]
    results = []
    for n, k, impl in cases:
        if cuda:  # one process: the CUDA peak is reset per case
            try:
                results.append(run_case(args, n, k, impl))
            except torch.OutOfMemoryError:
                results.append({"kind": k, "completion_len": n, "impl": impl, "peak_mib": None, "step_s": None, "error": "out of memory"})
            except ImportError as e:  # --liger without liger-kernel
                results.append({"kind": k, "completion_len": n, "impl": impl, "peak_mib": None, "step_s": None, "error": f"not installed ({e.name})"})
            make_model(args, "cuda").zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
        else:
            results.append(isolated(args, n, k, impl))
        print(f"  {results[-1]}", file=sys.stderr, flush=True)
    device = torch.cuda.get_device_name() if cuda else f"cpu ({os.cpu_count()} cores, {platform.machine()})"
    print(f"\nshape: {args.shape}  V: {args.vocab}  batch: {args.batch}  dtype: {args.dtype}  chunk_tokens: {args.chunk_tokens}  device: {device}\n")
    print("| loss | completion tokens | impl | peak MiB | step s | peak vs naive |")
    print("|---|---|---|---|---|---|")
    naive = {(r["kind"], r["completion_len"]): r for r in results if r["impl"] == "naive"}
    for r in results:
        ref = naive.get(("pg" if r["impl"] == "liger" else r["kind"], r["completion_len"]))
        ratio = f"{r['peak_mib'] / ref['peak_mib']:.2f}x" if r["peak_mib"] and ref and ref["peak_mib"] else "-"
        peak = f"{r['peak_mib']:.0f}" if r["peak_mib"] is not None else r.get("error", "-")
        step = f"{r['step_s']:.3f}" if r["step_s"] is not None else "-"
        label = "sft ce (reference)" if r["impl"] == "liger" else r["kind"]
        print(f"| {label} | {r['completion_len']} | {r['impl']} | {peak} | {step} | {ratio} |")
    tag = f"{'cuda' if cuda else 'cpu'}-{args.shape}"
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"memory-{tag}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"device": device, "args": vars(args), "results": results}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
