"""Remote teachers: the served prefill equals the local one; down servers and tokenizer mismatches fail clearly."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from mopdx.backends.base import Sampling, ScoreRequest
from mopdx.backends.hf import HFRolloutBackend, HFTeacherScorer
from mopdx.backends.remote import RemoteTeacherScorer, TeacherServerError, serve_teacher
from mopdx.errors import ModelError
from mopdx.models import load_model, load_tokenizer, tokenizer_fingerprint
from mopdx.text import encode_prompt


@pytest.fixture(scope="module")
def server(tiny_lab: Path):
    srv = serve_teacher(str(tiny_lab / "models" / "teacher" / "sort"), port=0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def _rollouts(tiny_lab: Path):
    tok = load_tokenizer(tiny_lab / "models" / "stage1")
    model = load_model(tiny_lab / "models" / "stage1")
    prompts = [encode_prompt(tok, p) for p in ["sort: 5281", "sort: 93", "reverse: a b c d e"]]
    return tok, HFRolloutBackend(model, tok.pad_token_id, tok.eos_token_id).generate(prompts, ["sort"] * 3, Sampling(n=2, max_new_tokens=6, seed=0))


def test_remote_prefill_equals_local(server: str, tiny_lab: Path) -> None:
    tok, r = _rollouts(tiny_lab)
    remote = RemoteTeacherScorer(server, tokenizer_fingerprint(tok))
    local = HFTeacherScorer(load_model(tiny_lab / "models" / "teacher" / "sort"))
    a, b = remote.score(r, ScoreRequest(topk=4)), local.score(r, ScoreRequest(topk=4))
    m = r.completion_mask.bool()
    assert torch.allclose(a.logps[m], b.logps[m], atol=1e-5)
    assert torch.equal(a.topk_ids[m], b.topk_ids[m]) and torch.allclose(a.topk_logps[m], b.topk_logps[m], atol=1e-5)


def test_tokenizer_mismatch_is_refused(server: str) -> None:
    with pytest.raises(ModelError, match="another tokenizer"):
        RemoteTeacherScorer(server, "0000000000000000")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_server_down_fails_with_one_clear_line_after_retries() -> None:
    port = _free_port()
    t = time.perf_counter()
    with pytest.raises(TeacherServerError, match=rf"not answering after 3 tries.*serve-teacher --model .* --port {port}"):
        RemoteTeacherScorer(f"http://127.0.0.1:{port}", "x", timeout_s=1, retries=3, backoff_s=0.05)
    assert time.perf_counter() - t >= 0.15  # backed off 0.05 + 0.1 between the tries


@pytest.mark.slow
def test_fit_with_a_served_teacher(tiny_lab: Path, tiny_overrides: list[str], tmp_path: Path) -> None:
    """`mopdx serve-teacher` in its own process; one domain's teacher is remote; a dead server is a one-line error."""
    port = _free_port()
    lab_args = [a for a in tiny_overrides if a.startswith("lab.")]
    proc = subprocess.Popen(
        [sys.executable, "-m", "mopdx", "serve-teacher", "--model", "lab:teacher/sort", "--port", str(port), *lab_args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        assert proc.stdout is not None and "serving teacher" in proc.stdout.readline()
        from mopdx.config import load_config
        from mopdx.run.fit import fit

        args = [*tiny_overrides, f"run.out_dir={tmp_path}", f"model.teachers.sort=http://127.0.0.1:{port}", "train.max_steps=2", "rollout.overlap_chunk=4"]
        summary = fit(load_config("mopd", [], args), progress=False)
        assert summary["steps"] == 2 and "sort" not in summary["teacher"]  # remote: no teacher accuracy
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    cli = subprocess.run(
        [sys.executable, "-m", "mopdx", "fit", "--quiet", *tiny_overrides, f"run.out_dir={tmp_path}", f"model.teachers.sort=http://127.0.0.1:{port}", "remote.retries=2", "remote.backoff_s=0.01"],
        capture_output=True, text=True,
    )
    last = cli.stderr.strip().splitlines()[-1]  # after the retry warnings: one error line
    assert cli.returncode == 2 and last.startswith("error:") and "serve-teacher" in last
