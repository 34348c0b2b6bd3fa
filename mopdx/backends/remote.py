"""Remote teachers: a scorer that prefills over HTTP, and the server it talks to.

``python -m mopdx serve-teacher --model DIR`` wraps a local scorer (``hf`` or
``vllm``) in a small JSON-over-HTTP server; :class:`RemoteTeacherScorer`
sends token ids (no text, so no tokenizer drift) and gets per-token
log-probs back.  The client checks on connect that the server's tokenizer
is the student's (a fingerprint of the token -> id map), uses timeouts and
retries with exponential backoff, and fails with one line that says how to
start the server when it is down.

Protocol: ``GET /info`` -> ``{"model", "vocab_size", "tokenizer"}``;
``POST /score`` ``{"sequences": [[ids]], "starts": [int], "completion_len": C,
"topk": k}`` -> ``{"logps": [[...]], "topk_ids": [[[...]]], "topk_logps": ...}``
where ``sequences`` are unpadded prompt+completion ids and ``starts`` the
index of each completion's first token.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import torch

from mopdx.backends.base import Rollouts, ScoreRequest, TeacherOutput, TeacherScorer
from mopdx.errors import ConfigError, ModelError, MopdxError
from mopdx.text import left_pad, right_pad

log = logging.getLogger("mopdx")


class TeacherServerError(MopdxError):
    """The teacher server is down, too slow, or answered with an error."""


def is_remote(ref: str | os.PathLike[str]) -> bool:
    return str(ref).startswith(("http://", "https://"))


def _repad(seqs: list[list[int]], starts: list[int], completion_len: int, pad_id: int) -> Rollouts:
    """Rebuild a left-padded prompt | right-padded completion batch from unpadded rows."""
    p_ids, p_mask = left_pad([s[:st] for s, st in zip(seqs, starts)], pad_id)
    c_ids, c_mask = right_pad([s[st:] for s, st in zip(seqs, starts)], pad_id, width=completion_len)
    return Rollouts(
        input_ids=torch.cat([p_ids, c_ids], 1),
        attention_mask=torch.cat([p_mask, c_mask], 1),
        prompt_len=p_ids.shape[1],
        completion_mask=c_mask.float(),
        rollout_logps=torch.zeros(c_mask.shape),
        domains=["remote"] * len(seqs),
        prompt_index=torch.arange(len(seqs)),
    )


class RemoteTeacherScorer:
    """Prefill by a ``mopdx serve-teacher`` server at ``url``."""

    def __init__(self, url: str, fingerprint: str, timeout_s: float = 60.0, retries: int = 4, backoff_s: float = 0.5, name: str = "teacher") -> None:
        self.url, self.timeout_s, self.retries, self.backoff_s, self.name = url.rstrip("/"), timeout_s, retries, backoff_s, name
        info = self._call("GET", "/info")
        if info.get("tokenizer") != fingerprint:
            raise ModelError(
                f"{name} at {self.url} serves another tokenizer ({info.get('model')}, {info.get('vocab_size')} tokens) than the student: "
                "serve a teacher that shares the student's tokenizer"
            )
        self.info = info

    def _call(self, method: str, path: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
        data = None if payload is None else json.dumps(payload).encode()
        delay, last = self.backoff_s, ""
        for attempt in range(1, self.retries + 1):
            req = urllib.request.Request(self.url + path, data=data, method=method, headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                    return json.loads(resp.read())
            except urllib.error.HTTPError as exc:  # the server answered: an error of ours or its, not worth retrying blindly
                body = exc.read().decode(errors="replace")[:300]
                if exc.code < 500:
                    raise TeacherServerError(f"{self.name} at {self.url} rejected the request ({exc.code}): {body}") from None
                last = f"HTTP {exc.code}: {body}"
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
                last = str(getattr(exc, "reason", exc))
            if attempt < self.retries:
                log.warning("%s at %s: try %d/%d failed (%s); retrying in %.1fs", self.name, self.url, attempt, self.retries, last, delay)
                time.sleep(delay)
                delay *= 2
        raise TeacherServerError(f"{self.name} server at {self.url} is not answering after {self.retries} tries ({last}); {self._restart_hint()}")

    def _restart_hint(self) -> str:
        """The command that brings this server back: the teacher's own folder when the server
        told it on connect, else which teacher and the config key that points here."""
        parts = urllib.parse.urlsplit(self.url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        info = getattr(self, "info", None)
        if info and info.get("model"):
            return f"restart it on {parts.hostname}: `python -m mopdx serve-teacher --model {info['model']} --port {port}`"
        m = re.fullmatch(r"teacher '(.+)'", self.name)
        key = f" (model.teachers.{m.group(1)} points here)" if m else ""
        return f"start it on {parts.hostname} with `python -m mopdx serve-teacher --model <the folder of {self.name}> --port {port}`{key}"

    def score(self, rollouts: Rollouts, request: ScoreRequest) -> TeacherOutput:
        if request.full:
            raise ConfigError(f"{self.name} is remote: it returns top-k log-probs, not full distributions; use loss.kind=pg or topk")
        seqs, starts = rollouts.unpadded()
        c = rollouts.completion_ids.shape[1]
        out = self._call("POST", "/score", {"sequences": seqs, "starts": starts, "completion_len": c, "topk": request.topk})
        device = rollouts.input_ids.device
        result = TeacherOutput(logps=torch.tensor(out["logps"], dtype=torch.float32, device=device))
        if request.topk:
            result.topk_ids = torch.tensor(out["topk_ids"], dtype=torch.long, device=device)
            result.topk_logps = torch.tensor(out["topk_logps"], dtype=torch.float32, device=device)
        return result


def make_handler(scorer: TeacherScorer, info: dict[str, Any], pad_id: int) -> type[BaseHTTPRequestHandler]:
    lock = threading.Lock()  # one prefill at a time: the scorer's model is not re-entrant

    class Handler(BaseHTTPRequestHandler):
        def _send(self, code: int, body: dict[str, Any]) -> None:
            raw = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def do_GET(self) -> None:
            if self.path == "/info":
                self._send(200, info)
            else:
                self._send(404, {"error": f"unknown path {self.path}"})

        def do_POST(self) -> None:
            if self.path != "/score":
                self._send(404, {"error": f"unknown path {self.path}"})
                return
            try:
                req = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                batch = _repad(req["sequences"], req["starts"], int(req["completion_len"]), pad_id)
                with lock, torch.no_grad():
                    out = scorer.score(batch, ScoreRequest(topk=int(req.get("topk", 0))))
            except (KeyError, ValueError, TypeError) as exc:
                self._send(400, {"error": f"bad request: {exc}"})
                return
            body: dict[str, Any] = {"logps": (out.logps * batch.completion_mask).tolist()}
            if out.topk_ids is not None and out.topk_logps is not None:
                body["topk_ids"], body["topk_logps"] = out.topk_ids.tolist(), out.topk_logps.tolist()
            self._send(200, body)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("serve-teacher: " + format, *args)

    return Handler


def serve_teacher(model_dir: str, host: str = "127.0.0.1", port: int = 8008, backend: str = "hf", dtype: str = "float32") -> ThreadingHTTPServer:
    """Build the server for the teacher in ``model_dir`` (call ``serve_forever`` on it).

    The port is taken before the model loads: a port in use fails at once, in one line."""
    from mopdx.backends.hf import HFTeacherScorer
    from mopdx.models import check_model_folder, load_model, load_tokenizer, tokenizer_fingerprint

    path = check_model_folder(model_dir, "teacher")
    try:
        server = ThreadingHTTPServer((host, port), BaseHTTPRequestHandler)  # the real handler needs the model
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise MopdxError(f"port {port} is in use on {host}: pick another --port") from None
        raise MopdxError(f"cannot serve on {host}:{port}: {exc.strerror or exc}: pick another --host or --port") from None
    try:
        tok = load_tokenizer(path)
        scorer: TeacherScorer
        if backend == "vllm":
            from mopdx.backends.vllm import VLLMTeacherScorer

            scorer = VLLMTeacherScorer(path)
        else:
            scorer = HFTeacherScorer(load_model(path, dtype, what="teacher"))
    except BaseException:
        server.server_close()
        raise
    info = {"model": str(path), "vocab_size": len(tok), "tokenizer": tokenizer_fingerprint(tok), "backend": backend}
    server.RequestHandlerClass = make_handler(scorer, info, tok.pad_token_id)
    return server
