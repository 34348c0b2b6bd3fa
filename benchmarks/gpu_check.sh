#!/usr/bin/env bash
# The GPU checks behind the README's GPU figures, as one script for a lent machine with
# PyTorch + CUDA but no internet: what mopdx needs beyond the image travels as wheels in
# .gpu/whl (omegaconf, optuna and their needs), the built lab (tokenizer, Stage-1 model,
# teachers, data; its camopd scenario left out) in .gpu/lab.
#
#   bash benchmarks/gpu_check.sh            # writes logs and JSON under $OUT (default: gpu-out/)
#
# Preparing .gpu/ on a machine with the project installed (both are left out of git):
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux2014_x86_64 -d .gpu/whl omegaconf optuna alembic SQLAlchemy colorlog Mako plotly liger-kernel
#   mkdir -p .gpu/labs && cp -r artifacts/lab/<hash> .gpu/labs/ && rm -rf .gpu/labs/*/camopd-*
#
# 1. the card, torch and whether vLLM is importable;
# 2. benchmarks/throughput.py on Qwen2-0.5B's shape in bfloat16: generate (hf) and continuous
#    batching (hf_cb) at batch 128 x 512 new tokens first (the goal's point), then the grid
#    (batch 32 / 128 / 512 x 128 / 512 / 2,048 tokens) as far as its time allows; vLLM too when
#    it imports; with the step's split and the training MFU;
# 3. a real training run through Lightning on the GPU: `mopdx fit` with a random
#    Qwen2-0.5B-shaped student in bfloat16 and the lab's teachers, a few steps;
# 4. benchmarks/memory.py on Qwen2-0.5B's shape with Qwen's vocabulary, naive vs chunked
#    (and Liger-Kernel's fused linear cross-entropy as a reference, when its wheel travels).
# 5. memory-tiny: benchmarks/memory.py with a small hidden size (the issue's CPU shape) on the card;
# 6. fsdp: `mopdx fit` under Lightning's FSDP on one card (lab student), a few steps.
# 7. fsdp-resume: that FSDP fit killed with kill -9 after its step-2 checkpoint, resumed with
#    --resume, against the same run uninterrupted (final weights compared).
# SECTIONS="throughput fit memory" (the default) picks which of 2-7 run; "throughput-grid" adds the whole grid.
set -uo pipefail
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1 TOKENIZERS_PARALLELISM=false
PY=${PY:-python3}
step() { echo; echo "=== $* ($(date +%T))"; }

step environment
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
if ls .gpu/whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
# entry points (strategies, the lab plug-in) need the package installed; no network, no deps
$PY -m pip install -q --no-index --no-deps --no-build-isolation -e . >"$OUT/pip.log" 2>&1 || { cat "$OUT/pip.log"; exit 1; }
$PY - <<'EOF'
import torch, transformers, pytorch_lightning as pl
print(f"torch {torch.__version__} cuda {torch.version.cuda} | transformers {transformers.__version__} | lightning {pl.__version__}")
print("gpu:", torch.cuda.get_device_name(), f"{torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB")
try:
    import vllm
    print("vllm", vllm.__version__)
except Exception as e:  # noqa: BLE001
    print("vllm: not importable here:", type(e).__name__, e)
EOF
if [ -d .gpu/labs ]; then  # .gpu/labs/<lab hash>/, copied from artifacts/lab/
  mkdir -p artifacts/lab && cp -r .gpu/labs/* artifacts/lab/
fi
$PY -m mopdx lab info 2>&1 | tail -5

SECTIONS=${SECTIONS:-throughput fit memory}
want() { [[ " $SECTIONS " == *" $1 "* ]]; }

if want memory; then
step "memory: Qwen2-0.5B shape, V = 151,936, bfloat16, batch 8"
timeout 300 $PY benchmarks/memory.py --shape 0.5b --dtype bfloat16 --lengths 256 1024 --kinds pg topk full_reverse_kl \
  --liger --out "$OUT/memory-cuda-0.5b.json" 2>&1 | tee "$OUT/memory.log" | grep -v -i warn
fi

if want memory-tiny; then
step "memory: small hidden size, V = 151,936, float32, batch 8"
timeout 200 $PY benchmarks/memory.py --shape tiny --lengths 256 1024 --kinds pg topk full_reverse_kl \
  --out "$OUT/memory-cuda-tiny.json" 2>&1 | tee "$OUT/memory-tiny.log" | grep -v -i warn | grep -v "^  {"
fi

if want fsdp; then
step "mopdx fit under FSDP on one card (lab student)"
timeout 200 $PY -m mopdx fit --quiet train.parallel=fsdp train.devices=1 rollout.sampler=keyed eval.sampler=keyed \
  train.max_steps=4 train.eval_every=0 train.ckpt_every=2 data.eval_per_domain=32 eval.samples=2 run.out_dir=/tmp/fsdp run.name=fsdp \
  2>&1 | tee "$OUT/fsdp.log" | grep -v -i warn | tail -15
ls /tmp/fsdp/fsdp /tmp/fsdp/fsdp/final /tmp/fsdp/fsdp/checkpoints 2>&1 | head -20
fi

if want fsdp-resume; then
step "FSDP on one card: killed after its step-2 checkpoint, resumed, against the uninterrupted run"
common=(--quiet train.parallel=fsdp train.devices=1 rollout.sampler=keyed eval.sampler=keyed train.max_steps=8 train.eval_every=0
        train.ckpt_every=2 data.eval_per_domain=32 eval.samples=2 run.out_dir=/tmp/fsdpr)
timeout 150 $PY -m mopdx fit "${common[@]}" run.name=whole 2>&1 | grep -v -i warn | tail -4
setsid $PY -m mopdx fit "${common[@]}" run.name=cut >/tmp/cut.log 2>&1 &
for _ in $(seq 600); do ls /tmp/fsdpr/cut/checkpoints/*step=2*.ckpt >/dev/null 2>&1 && break; sleep 0.2; done
sleep 1; pkill -9 -f "run.name=cut"; sleep 2
echo "killed; checkpoints: $(ls /tmp/fsdpr/cut/checkpoints | tr '\n' ' ')"
timeout 150 $PY -m mopdx fit --quiet --resume /tmp/fsdpr/cut 2>&1 | grep -v -i warn | tail -4
ls /tmp/fsdpr/whole/final /tmp/fsdpr/cut/final | tr '\n' ' '; echo
$PY - <<'EOF'
from safetensors.torch import load_file
a, b = (load_file(f"/tmp/fsdpr/{r}/final/model.safetensors") for r in ("whole", "cut"))
diff = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
print(f"final weights: {len(a)} tensors, same names: {a.keys() == b.keys()}, max |whole - resumed| = {diff:.3g}")
EOF
fi

BACKENDS="hf hf_cb"
$PY -c "import vllm" 2>/dev/null && BACKENDS="hf hf_cb vllm"
if want throughput; then
step "throughput: Qwen2-0.5B shape, bfloat16, batch 128 x 512 new tokens, backends: $BACKENDS"
timeout 300 $PY benchmarks/throughput.py --random-qwen2 0.5b --dtype bfloat16 --backends $BACKENDS --overlap-chunk 0 \
  --batch 128 --max-new-tokens 512 --repeats 2 --out "$OUT/throughput-cuda-0.5b-128x512.json" 2>&1 | tee "$OUT/throughput.log" | grep -v -i warn
fi
if want throughput-grid; then
step "throughput grid: batch 32 / 128 / 512 x 128 / 512 / 2048 new tokens, backends: $BACKENDS"
timeout 540 $PY benchmarks/throughput.py --random-qwen2 0.5b --dtype bfloat16 --backends $BACKENDS --overlap-chunk 0 \
  --batch 32 128 512 --max-new-tokens 128 512 2048 --repeats 1 --out "$OUT/throughput-cuda-0.5b-grid.json" 2>&1 | tee "$OUT/throughput-grid.log" | grep -v -i warn
fi

if want fit; then
step "mopdx fit on the GPU: random Qwen2-0.5B-shaped student (bfloat16), lab teachers"
$PY - <<'EOF'
import sys
from pathlib import Path
sys.path.insert(0, "benchmarks")
from throughput import random_qwen2
random_qwen2("0.5b", Path("/tmp/r05b"))
EOF
timeout 240 $PY -m mopdx fit --quiet model.student=/tmp/r05b model.dtype=bfloat16 train.precision=bf16-true \
  train.max_steps=${FIT_STEPS:-10} train.eval_every=0 train.log_every=1 eval.samples=1 run.out_dir=/tmp/runs \
  2>&1 | tee "$OUT/fit.log" | grep -v -i warning | tail -25
run=$(ls -d /tmp/runs/*/ | head -1)
[ -n "$run" ] && cp "$run"/logs/metrics.csv "$OUT"/fit-metrics.csv; cp "$run"/summary.json "$OUT"/fit-summary.json
$PY - "$run" <<'EOF'
import sys, glob, pandas as pd
pd.set_option('display.width', 250)
files = glob.glob(sys.argv[1] + "/logs/metrics.csv")
if files:
    m = pd.read_csv(files[0])
    cols = [c for c in m.columns if c.startswith(("time/", "throughput/", "train/loss", "train/grad_norm", "train/completion_len"))]
    print(m[["step"] + cols].dropna(how="all", subset=cols).tail(6).to_string(index=False))
EOF
fi
echo "done $(date +%T)"
