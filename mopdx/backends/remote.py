"""Served teachers: vLLM's own OpenAI-compatible server, scored over HTTP by token ids.

Why vLLM's server and not one of ours: it is what a real deployment scales first
(teachers as a prefill service, as in the MOPD paper, verl, slime and TRL), and
it already scores token-id prompts.  A completions request whose prompt is the
student's token ids, with ``prompt_logprobs = k``, ``max_tokens = 1`` and
temperature 1, returns for every position the log-prob of the token there and
the teacher's top-k (verl's on-policy distillation scores the same way).

:class:`ServedTeacherScorer` sends token ids only (never text), batches
sequences into requests and keeps several in flight, spreads them over the
replicas of one teacher (``model.teachers.<d>=http://a:8000,http://b:8000``) and
moves a replica's work to the others when it stops answering.  Before the first
step it checks the server's tokenizer against the student's (``/tokenize`` on
probe texts) and refuses a mismatch with one line; a server that is down at start
fails with one line that says how to start it.  ``python -m mopdx serve-teacher``
starts vLLM's server with the settings scoring needs (:func:`vllm_server_command`).
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import logging
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import torch

from mopdx.backends.base import Rollouts, ScoreRequest, TeacherOutput
from mopdx.errors import ConfigError, ModelError, MopdxError

log = logging.getLogger("mopdx")

# Texts whose tokenisation the client compares with the server's (the lab's and natural text).
PROBES = ("inc: 0123 4567 8901", "rot: 9876|5432", "Hello, world! The answer is 42.", "  spaces\tand\nnewlines  ")


class TeacherServerError(MopdxError):
    """The teacher server is down, too slow, or answered with an error."""


def replica_urls(ref: str) -> list[str]:
    """``http://a:8000,http://b:8000`` -> the replicas of one teacher."""
    return [u.strip().rstrip("/") for u in str(ref).split(",") if u.strip()]


def vllm_server_command(model_dir: str, host: str = "127.0.0.1", port: int = 8000, dtype: str = "float32", max_logprobs: int = 64,
                        extra: list[str] | None = None) -> list[str]:
    """vLLM's API server for scoring: the module (the ``vllm`` console script is broken in the
    CPU build), the teacher under the name ``teacher``, enough log-probs for the top-k."""
    return [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir), "--served-model-name", "teacher",
            "--host", host, "--port", str(port), "--dtype", dtype, "--max-logprobs", str(max_logprobs), *(extra or [])]


class _Replica:
    def __init__(self, url: str) -> None:
        self.url, self.down_until, self.model = url, 0.0, ""  # model: the folder the server said it serves

    @property
    def up(self) -> bool:
        return time.monotonic() >= self.down_until


class ServedTeacherScorer:
    """Prefill by vLLM OpenAI-compatible servers (one teacher, one or more replicas)."""

    served = True  # waits on a server: a panel prefills its served teachers at the same time (mopdx/backends/panel.py)

    def __init__(self, ref: str, tokenizer: Any, timeout_s: float = 60.0, retries: int = 4, backoff_s: float = 0.5, name: str = "teacher",
                 batch_size: int = 32, in_flight: int = 4) -> None:
        self.replicas = [_Replica(u) for u in replica_urls(ref)]
        self.timeout_s, self.retries, self.backoff_s, self.name = timeout_s, retries, backoff_s, name
        self.batch_size, self.in_flight = batch_size, in_flight
        self._next, self._lock = 0, threading.Lock()
        for r in self.replicas:
            models = self._call(r.url, "GET", "/v1/models")
            r.model = str((models.get("data") or [{}])[0].get("root") or "")
            self._check_tokenizer(r, tokenizer)

    # ------------------------------------------------------------------ HTTP
    def _post(self, url: str, path: str, payload: dict[str, Any], tries: int | None = None) -> dict[str, Any]:
        return self._call(url, "POST", path, payload, tries)

    def _call(self, url: str, method: str, path: str, payload: dict[str, Any] | None = None, tries: int | None = None) -> dict[str, Any]:
        data = None if payload is None else json.dumps(payload).encode()
        delay, last, tries = self.backoff_s, "", tries or self.retries
        for attempt in range(1, tries + 1):
            req = urllib.request.Request(url + path, data=data, method=method, headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                    return json.loads(resp.read())
            except urllib.error.HTTPError as exc:  # the server answered: a bad request is not worth retrying
                body = exc.read().decode(errors="replace")[:300]
                if exc.code < 500:
                    raise TeacherServerError(f"{self.name} at {url} rejected the request ({exc.code}): {body}") from None
                last = f"HTTP {exc.code}: {body}"
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
                last = str(getattr(exc, "reason", exc))
            if attempt < tries:
                log.warning("%s at %s: try %d/%d failed (%s); retrying in %.1fs", self.name, url, attempt, tries, last, delay)
                time.sleep(delay)
                delay *= 2
        raise TeacherServerError(f"{self.name} server at {url} is not answering after {tries} tries ({last}); {self._start_hint(url)}")

    def _start_hint(self, url: str) -> str:
        """The command that brings this server back: with the folder it served when it was up."""
        parts = urllib.parse.urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        domain = self.name.removeprefix("teacher ").strip("'")
        known = next((r.model for r in getattr(self, "replicas", []) if r.url == url and r.model), "")
        if known:
            return f"restart it on {parts.hostname}: `python -m mopdx serve-teacher --model {known} --port {port}`"
        return f"start it on {parts.hostname} with `python -m mopdx serve-teacher --model <the folder of {self.name}> --port {port}` (model.teachers.{domain} points here)"

    def _check_tokenizer(self, replica: _Replica, tokenizer: Any) -> None:
        for text in PROBES:
            served = self._post(replica.url, "/tokenize", {"model": "teacher", "prompt": text, "add_special_tokens": False})["tokens"]
            ours = tokenizer(text, add_special_tokens=False)["input_ids"]
            if list(served) != list(ours):
                raise ModelError(f"{self.name} at {replica.url} tokenises {text!r} as {list(served)[:8]}... but the student's tokenizer gives "
                                 f"{list(ours)[:8]}...: serve a teacher that shares the student's tokenizer")

    # --------------------------------------------------------------- scoring
    def _pick(self) -> _Replica:
        with self._lock:
            for _ in range(len(self.replicas)):
                r = self.replicas[self._next % len(self.replicas)]
                self._next += 1
                if r.up:
                    return r
        return min(self.replicas, key=lambda r: r.down_until)  # all marked down: the one that comes back first

    def _score_batch(self, seqs: list[list[int]], topk: int) -> list[dict[str, Any]]:
        """One request on some replica; a replica that fails is set aside for a while and the next one tries."""
        payload = {"model": "teacher", "prompt": seqs, "max_tokens": 1, "temperature": 1.0, "prompt_logprobs": topk}
        errors = []
        for _ in range(len(self.replicas)):
            replica = self._pick()
            try:
                choices = self._post(replica.url, "/v1/completions", payload, tries=self.retries if len(self.replicas) == 1 else 2)["choices"]
                return [c["prompt_logprobs"] for c in sorted(choices, key=lambda c: c["index"])]
            except TeacherServerError as exc:
                if "rejected" in str(exc):
                    raise
                replica.down_until = time.monotonic() + 30.0
                errors.append(str(exc))
                if len(self.replicas) > 1:
                    log.warning("%s: replica %s failed; moving its requests to the other replicas", self.name, replica.url)
        raise TeacherServerError(errors[-1] if len(errors) == 1 else f"{self.name}: all {len(self.replicas)} replicas failed; last: {errors[-1]}")

    def score(self, rollouts: Rollouts, request: ScoreRequest) -> TeacherOutput:
        if request.full:
            raise ConfigError(f"{self.name} is served: it returns top-k log-probs, not full distributions; use loss.kind=pg or topk")
        seqs, starts = rollouts.unpadded()
        k = request.topk
        batches = [seqs[i : i + self.batch_size] for i in range(0, len(seqs), self.batch_size)]
        with cf.ThreadPoolExecutor(max_workers=max(1, min(self.in_flight, len(batches)))) as pool:
            rows = [row for part in pool.map(lambda b: self._score_batch(b, k), batches) for row in part]
        b, c = rollouts.completion_ids.shape
        logps = torch.zeros(b, c)
        topk_ids, topk_logps = torch.zeros(b, c, max(k, 1), dtype=torch.long), torch.full((b, c, max(k, 1)), -1e9)
        for i, (seq, st, row) in enumerate(zip(seqs, starts, rows)):
            for j, pos in enumerate(range(st, len(seq))):
                entry = row[pos]  # {token id: {"logprob", "rank"}} for the token at ``pos`` and the top-k
                logps[i, j] = entry[str(seq[pos])]["logprob"]
                if k:
                    best = sorted(((v["rank"], int(t), v["logprob"]) for t, v in entry.items() if v["rank"] <= k))[:k]
                    topk_ids[i, j, : len(best)] = torch.tensor([t for _, t, _ in best])
                    topk_logps[i, j, : len(best)] = torch.tensor([lp for _, _, lp in best])
        device = rollouts.input_ids.device
        out = TeacherOutput(logps=logps.to(device))
        if k:
            out.topk_ids, out.topk_logps = topk_ids.to(device), topk_logps.to(device)
        return out
