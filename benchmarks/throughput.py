"""Throughput of the rollout / prefill backends: ``hf`` (generate), ``hf_cb`` (transformers'
continuous batching) and ``vllm``, same model and batch.

Run (CPU, the lab's Stage-1 model, batch 32, 64 and 128)::

    python benchmarks/throughput.py --repeats 7
    python benchmarks/throughput.py --random-qwen2 24m --max-new-tokens 32
    python benchmarks/throughput.py --random-qwen2 0.5b --dtype bfloat16 --batch 32 128 512 --max-new-tokens 128 512 2048  # on a GPU
    python benchmarks/throughput.py --backends hf --served 1 2             # + teachers served by vLLM on loopback

Prints a table and writes JSON (``benchmarks/results/throughput-<device>.json``):
tokens/s for rollout (generated tokens), prefill (scored prompt + completion
tokens) and the whole step (sample + prefill + student forward/backward +
weight sync), for each backend, the step's time split into sampling, prefill,
forward+backward, optimiser and sync, the training forward+backward's model FLOPs
utilisation (6 x parameters x tokens, against ``--peak-tflops``: known for H100 / H200
bf16), and the share of teacher prefill hidden behind sampling when prefill is
overlapped (``--overlap-chunk``).  Each backend runs in its own process (see
:func:`run_isolated`); backends whose package is missing (vLLM) are skipped with a line.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
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

from mopdx.backends.base import Sampling, ScoreRequest  # noqa: E402
from mopdx.backends.hf import HFRolloutBackend, HFTeacherScorer, completion_logits  # noqa: E402
from mopdx.backends.hf_cb import HFContinuousBatchingBackend  # noqa: E402
from mopdx.distill.pipeline import sample_and_prefill  # noqa: E402
from mopdx.losses import topk_reverse_kl  # noqa: E402
from mopdx.models import load_model, load_tokenizer  # noqa: E402
from mopdx.text import encode_prompt  # noqa: E402

BACKENDS = ("hf", "hf_cb", "vllm", "vllm+compile")
# dense bf16 peak of the cards this project is lent (NVIDIA's data sheets, SXM, without sparsity)
PEAK_TFLOPS = {"H100": 989.4, "H200": 989.4}
PHASES = ("sample", "prefill", "fwd_bwd", "optimizer", "sync")
SIZES = {
    "3m": dict(hidden_size=256, num_layers=4, num_heads=4, num_kv_heads=2, intermediate_size=768),
    "24m": dict(hidden_size=512, num_layers=8, num_heads=8, num_kv_heads=2, intermediate_size=1536),
    "0.5b": dict(hidden_size=896, num_layers=24, num_heads=14, num_kv_heads=2, intermediate_size=4864),  # Qwen2-0.5B's shape
}


def lab_model() -> str:
    from mopdx.config import load_config
    from mopdx.plugins import resolve_ref

    return resolve_ref("lab:stage1", load_config("mopd", [], []))


def random_qwen2(size: str, out: Path) -> str:
    """A randomly initialised Qwen2 of ``size`` with the lab tokenizer, saved to ``out``."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tok = load_tokenizer(lab_model())
    s = SIZES[size]
    cfg = Qwen2Config(
        vocab_size=len(tok), hidden_size=s["hidden_size"], num_hidden_layers=s["num_layers"], num_attention_heads=s["num_heads"],
        num_key_value_heads=s["num_kv_heads"], intermediate_size=s["intermediate_size"], max_position_embeddings=512,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    Qwen2ForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


def timed(fn: Any, repeats: int) -> tuple[Any, float]:
    """Median seconds of ``repeats`` calls after one warm-up call; returns the last result."""
    out = fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return out, statistics.median(times)


def bench(backend_name: str, model_dir: str, batch: int, args: argparse.Namespace) -> dict[str, Any]:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tok = load_tokenizer(model_dir)
    student = load_model(model_dir, args.dtype).to(device)
    teacher_model = load_model(model_dir, args.dtype).to(device)
    texts = [f"sort: {i * 7919 % 10**6}" if i % 2 else f"reverse: {' '.join('abcdefghijkl'[(i + j) % 12] for j in range(3 + i % 4))}" for i in range(batch)]
    ids = [encode_prompt(tok, t) for t in texts]
    domains = ["d"] * len(ids)
    if backend_name.startswith("vllm"):
        from mopdx.backends.vllm import EngineSettings, VLLMRolloutBackend, VLLMTeacherScorer

        compiled = backend_name == "vllm+compile"
        settings = EngineSettings(dtype=args.dtype, gpu_memory_utilization=args.gpu_mem, max_logprobs=args.topk, enforce_eager=not compiled)
        rollout: Any = VLLMRolloutBackend(model_dir, tok.pad_token_id, tok.eos_token_id, settings)
        scorer: Any = VLLMTeacherScorer(model_dir, settings, topk=args.topk)
    else:
        cls = HFContinuousBatchingBackend if backend_name == "hf_cb" else HFRolloutBackend
        rollout = cls(student, tok.pad_token_id, tok.eos_token_id)
        scorer = HFTeacherScorer(teacher_model)
    request = ScoreRequest(topk=args.topk)

    def sample() -> Any:
        return rollout.generate(ids, domains, Sampling(n=1, max_new_tokens=args.max_new_tokens, temperature=1.0, seed=0, greedy=args.greedy))

    rollouts, t_sample = timed(sample, args.repeats)
    rollouts = rollouts.to(device)
    gen_tokens = int(rollouts.completion_mask.sum())
    _, t_prefill = timed(lambda: scorer.score(rollouts, request), args.repeats)
    scored_tokens = int(rollouts.attention_mask.sum())
    opt = torch.optim.AdamW(student.parameters(), lr=1e-6)

    phases: dict[str, list[float]] = {k: [] for k in PHASES}
    trained_tokens: list[int] = []

    def tick() -> float:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return time.perf_counter()

    def step() -> Any:
        marks = [tick()]
        r = sample().to(device)
        marks.append(tick())
        t = scorer.score(r, request)
        marks.append(tick())
        logps = torch.log_softmax(completion_logits(student, r.input_ids, r.attention_mask, r.prompt_len), -1)
        loss = topk_reverse_kl(logps.gather(-1, t.topk_ids), t.topk_logps, r.completion_mask, tail=True)
        loss.backward()
        marks.append(tick())
        opt.step()
        opt.zero_grad(set_to_none=True)
        marks.append(tick())
        rollout.sync_weights(student.state_dict())
        marks.append(tick())
        for k, a, b in zip(PHASES, marks, marks[1:]):
            phases[k].append(b - a)
        trained_tokens.append(int(r.attention_mask.sum()))
        return r

    _, t_step = timed(step, args.repeats)
    split = {k: statistics.median(v[1:]) for k, v in phases.items()}  # the warm-up call left out, as in timed()
    # model FLOPs of the training forward+backward: 6 x (parameters in matmuls) x tokens (attention's own FLOPs left out)
    matmul_params = sum(p.numel() for n, p in student.named_parameters() if "embed_tokens" not in n)
    flops = 6 * matmul_params * statistics.median(trained_tokens[1:])
    tflops = flops / split["fwd_bwd"] / 1e12
    peak = args.peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if torch.cuda.is_available() and k in torch.cuda.get_device_name()), 0.0)
    result = {
        "backend": backend_name,
        "batch": batch,
        "max_new_tokens": args.max_new_tokens,
        "generated_tokens": gen_tokens,
        "rollout_s": t_sample,
        "rollout_tok_s": gen_tokens / t_sample,
        "prefill_s": t_prefill,
        "prefill_tok_s": scored_tokens / t_prefill,
        "step_s": t_step,
        "step_tok_s": gen_tokens / t_step,
        "step_split_s": split,
        "sample_share": split["sample"] / sum(split.values()),
        "train_tflops": tflops,
        "mfu": tflops / peak if peak else None,
    }
    if args.overlap_chunk:
        # vLLM student + transformers teacher in a worker thread (two in-process vLLM engines
        # cannot run at once; served teachers overlap the same way).
        hf_teacher = {"d": HFTeacherScorer(teacher_model)}

        def chunked(lo: int, hi: int, k: int) -> Any:
            return rollout.generate(ids[lo:hi], domains[lo:hi], Sampling(n=1, max_new_tokens=args.max_new_tokens, seed=k))

        fracs = []
        for _ in range(args.repeats):
            _, _, times = sample_and_prefill(chunked, len(ids), args.overlap_chunk, hf_teacher, request, tok.pad_token_id)
            fracs.append(times.hidden_frac)
        result["overlap_chunk"] = args.overlap_chunk
        result["prefill_hidden_frac"] = statistics.median(fracs)
    return result


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model_dir: str, port: int) -> subprocess.Popen:
    """``mopdx serve-teacher`` (vLLM's API server) on loopback; returns once /health answers."""
    import urllib.request

    env = {**os.environ, "VLLM_LOGGING_LEVEL": "WARNING"}
    log_file = open(Path(tempfile.gettempdir()) / f"mopdx-served-{port}.log", "w")  # noqa: SIM115 - the server's whole life
    proc = subprocess.Popen([sys.executable, "-m", "mopdx", "serve-teacher", "--model", model_dir, "--port", str(port), "--vllm-args=--enforce-eager"],
                            stdout=log_file, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    deadline = time.time() + 600
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            return proc
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                raise SystemExit(f"error: the vLLM server on port {port} did not start (see {log_file.name})")
            time.sleep(1)


def bench_served(model_dir: str, batches: list[int], replicas: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Teacher prefill through ``replicas`` vLLM servers on loopback vs in-process transformers, same rollouts."""
    from mopdx.backends.remote import ServedTeacherScorer

    ports = [free_port() for _ in range(replicas)]
    procs = [start_server(model_dir, port) for port in ports]
    try:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        tok = load_tokenizer(model_dir)
        model = load_model(model_dir, args.dtype).to(device)
        served = ServedTeacherScorer(",".join(f"http://127.0.0.1:{p}" for p in ports), tok, batch_size=8, in_flight=4 * replicas)
        local = HFTeacherScorer(model)
        out = []
        for batch in batches:
            texts = [f"sort: {i * 7919 % 10**6}" for i in range(batch)]
            r = HFRolloutBackend(model, tok.pad_token_id, tok.eos_token_id).generate(
                [encode_prompt(tok, t) for t in texts], ["d"] * batch, Sampling(max_new_tokens=args.max_new_tokens[0], seed=0)).to(device)
            tokens = int(r.attention_mask.sum())
            request = ScoreRequest(topk=args.topk)
            _, t_served = timed(lambda: served.score(r, request), args.repeats)
            _, t_local = timed(lambda: local.score(r, request), args.repeats)
            out.append({"batch": batch, "replicas": replicas, "served_tok_s": tokens / t_served, "local_tok_s": tokens / t_local})
        return out
    finally:
        for p in procs:
            p.terminate()
            p.wait(timeout=60)


def run_isolated(backend: str, batch: int, new_tokens: int, model_dir: str, args: argparse.Namespace, tmp: str) -> list[dict[str, Any]]:
    """Run one backend at one batch size in its own process.

    In one process the second backend ran 15-25% slower: on the 2-core CPU, vLLM's lab
    rollouts took 40 ms in a fresh process but 46-50 ms after a transformers training
    step and a threaded prefill had run there.
    """
    out = Path(tmp) / f"{backend}-{batch}-{new_tokens}.json"
    cmd = [sys.executable, __file__, "--only", backend, "--model", model_dir, "--out", str(out), "--batch", str(batch), "--max-new-tokens", str(new_tokens)]
    for flag in ("repeats", "topk", "dtype", "gpu_mem", "overlap_chunk", "peak_tflops"):
        cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    if args.greedy:
        cmd.append("--greedy")
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        print(proc.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"error: the {backend} benchmark failed (exit {proc.returncode})")
    return json.loads(out.read_text())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, nargs="+", default=[32, 64, 128])
    p.add_argument("--max-new-tokens", type=int, nargs="+", default=[16])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--topk", type=int, default=64)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--gpu-mem", type=float, default=0.3)
    p.add_argument("--peak-tflops", type=float, default=0.0, help="the device's peak for the MFU column (default: known for H100/H200 bf16)")
    p.add_argument("--greedy", action="store_true")
    p.add_argument("--overlap-chunk", type=int, default=16)
    p.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS,
                   help="vllm+compile: vLLM with torch.compile (vllm.enforce_eager=false)")
    p.add_argument("--model", default=None, help="model folder (default: the lab's Stage-1 model)")
    p.add_argument("--random-qwen2", choices=sorted(SIZES), default=None)
    p.add_argument("--served", type=int, nargs="*", default=[], help="also time prefill through this many vLLM servers on loopback (e.g. 1 2)")
    p.add_argument("--served-only", action="store_true", help="only the served-teacher rows (e.g. with --topk 0: the PG loss's prefill)")
    p.add_argument("--out", default=None)
    p.add_argument("--only", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")
    if args.only:  # one backend and one length in this (fresh) process; its results go to --out
        args.max_new_tokens = args.max_new_tokens[0]
        Path(args.out).write_text(json.dumps([bench(args.only, args.model, n, args) for n in args.batch]))
        return 0
    missing = [b for b in args.backends if b.startswith("vllm") and importlib.util.find_spec("vllm") is None]
    if missing:
        print(f"skipping {', '.join(missing)}: vLLM is not installed here", file=sys.stderr)
        args.backends = [b for b in args.backends if b not in missing]
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model or (random_qwen2(args.random_qwen2, Path(tmp) / "model") if args.random_qwen2 else lab_model())
        results = []
        for m in [] if args.served_only else args.max_new_tokens:
            for n in args.batch:
                for b in args.backends:
                    results += run_isolated(b, n, m, model_dir, args, tmp)
        served = [row for k in args.served for row in bench_served(model_dir, args.batch, k, args)]
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores, {platform.processor() or platform.machine()})"
    print(f"\nmodel: {args.random_qwen2 or args.model or 'lab stage1'}  device: {device}\n")
    print("| new tokens | batch | backend | rollout tok/s | rollout vs hf | step s | sample | prefill | fwd+bwd | optimiser | sync | sample share | train TFLOP/s | MFU | prefill hidden |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    hf = {(r["batch"], r["max_new_tokens"]): r for r in results if r["backend"] == "hf"}
    for r in results:
        base = hf.get((r["batch"], r["max_new_tokens"]))
        if base:
            r["rollout_speedup_over_hf"] = r["rollout_tok_s"] / base["rollout_tok_s"]
            r["step_speedup_over_hf"] = r["step_tok_s"] / base["step_tok_s"]
        hidden = f"{r['prefill_hidden_frac']:.2f}" if "prefill_hidden_frac" in r else "-"
        ratio = f"{r['rollout_speedup_over_hf']:.2f}x" if "rollout_speedup_over_hf" in r else "-"
        sp = r["step_split_s"]
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "-"
        print(
            f"| {r['max_new_tokens']} | {r['batch']} | {r['backend']} | {r['rollout_tok_s']:.0f} | {ratio} | {r['step_s']:.3f} | {sp['sample']:.3f} "
            f"| {sp['prefill']:.3f} | {sp['fwd_bwd']:.3f} | {sp['optimizer']:.3f} | {sp['sync']:.3f} | {r['sample_share']:.0%} | {r['train_tflops']:.2f} | {mfu} | {hidden} |"
        )
    if served:
        print(f"\nteacher prefill (top-{args.topk}) through vLLM's OpenAI server on loopback vs in-process transformers:\n")
        print("| batch | servers | served tok/s | in-process tok/s | served / in-process |")
        print("|---|---|---|---|---|")
        for r in served:
            print(f"| {r['batch']} | {r['replicas']} | {r['served_tok_s']:.0f} | {r['local_tok_s']:.0f} | {r['served_tok_s'] / r['local_tok_s']:.2f}x |")
    summary: dict[str, Any] = {"device": device, "args": vars(args), "results": results, "served": served}
    tag = f"{'cuda' if torch.cuda.is_available() else 'cpu'}-{args.random_qwen2 or 'lab'}"
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"throughput-{tag}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
