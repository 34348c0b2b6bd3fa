"""benchmarks/throughput.py: every backend's row carries the step's time split and its MFU inputs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]


@pytest.mark.slow
def test_throughput_rows_split_the_step_for_generate_and_continuous_batching(tiny_lab: Path, tmp_path: Path) -> None:
    out = tmp_path / "t.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "throughput.py"), "--model", str(tiny_lab / "models" / "stage1"), "--backends", "hf", "hf_cb",
           "--batch", "4", "--max-new-tokens", "4", "--repeats", "2", "--overlap-chunk", "0", "--topk", "4", "--peak-tflops", "1", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())["results"]
    assert sorted((r["backend"], r["max_new_tokens"]) for r in rows) == [("hf", 4), ("hf_cb", 4)]
    for r in rows:
        assert set(r["step_split_s"]) == {"sample", "prefill", "fwd_bwd", "optimizer", "sync"} and all(v >= 0 for v in r["step_split_s"].values())
        assert 0 < r["sample_share"] < 1 and r["train_tflops"] > 0 and r["mfu"] == pytest.approx(r["train_tflops"])
        assert r["generated_tokens"] <= 4 * r["max_new_tokens"]
    assert "| hf_cb |" in proc.stdout and rows[1]["rollout_speedup_over_hf"] > 0
