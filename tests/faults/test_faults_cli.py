"""Faults a user meets at the command line: concurrent runs, failed runs, resumes, bad files, Ctrl-C.

Each test is one case of the fault probe: the run folder is locked while a process
trains in it and made atomically; a failed run leaves no folder holding only its
config; a resume keeps ``config.yaml``; YAML errors, unknown keys, edited model
folders, down teacher servers and busy ports each say what to fix in one line;
Ctrl-C says where to resume and exits with 130.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from mopdx import cli
from mopdx.backends.remote import ServedTeacherScorer, TeacherServerError
from mopdx.config import load_config, to_yaml
from mopdx.errors import ConfigError, ModelError
from mopdx.run.assembly import RunInputs
from mopdx.run.folder import lock_run_dir, new_run_dir, release_run_dir, saved_config


def run_cli(*args: str, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "TQDM_DISABLE": "1"}
    return subprocess.run([sys.executable, "-m", "mopdx", *args], capture_output=True, text=True, env=env, timeout=600, **kw)


def error_line(stderr: str) -> str:
    """The one ``error:`` line, and no traceback."""
    lines = [line for line in stderr.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def _inputs(cfg) -> RunInputs:
    return RunInputs(cfg, [], [], [], {}, None)  # type: ignore[arg-type]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# 1. locks and atomic run folders


def test_concurrent_fresh_runs_get_distinct_folders(tmp_path: Path) -> None:
    cfg = load_config("mopd", [], [f"run.out_dir={tmp_path}", "run.name=same"])
    for _ in range(5):  # rounds: the race needs the threads to meet between check and mkdir
        barrier, made, errors = threading.Barrier(4), [], []

        def start() -> None:
            barrier.wait()
            try:
                made.append(new_run_dir(cfg))
            except Exception as exc:  # noqa: BLE001
                errors.append(exc)

        threads = [threading.Thread(target=start) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors and len(set(made)) == 4
    assert len(list(tmp_path.iterdir())) == 20


def test_resume_of_a_folder_in_use_fails_at_once(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(to_yaml(load_config("mopd")))
    lock_run_dir(run)  # this process "trains" in it
    try:
        t = time.perf_counter()
        proc = run_cli("fit", "--resume", str(run))
        assert proc.returncode == 2
        assert f"in use by pid {os.getpid()}" in error_line(proc.stderr)
        assert time.perf_counter() - t < 60  # no data, model or trainer touched
    finally:
        release_run_dir(run, discard_if_empty=False)
    assert (run / "config.yaml").is_file()


@pytest.mark.slow
def test_two_concurrent_resumes_of_one_run(tiny_lab, tiny_overrides, tmp_path: Path) -> None:
    """The second --resume exits 2 in one line while the first trains on, alone."""
    from mopdx.run.fit import fit

    out = tmp_path / "runs"
    part = fit(load_config("mopd", [], [*tiny_overrides, f"run.out_dir={out}", "run.name=r", "train.max_steps=2"]), progress=False)
    run = Path(part["run_dir"])
    more = ["train.max_steps=12"]  # only the budget: a changed ckpt_every alone makes Lightning write last-v1.ckpt
    env = {**os.environ, "TQDM_DISABLE": "1"}
    first = subprocess.Popen([sys.executable, "-m", "mopdx", "fit", "--quiet", "--resume", str(run), *more],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.time() + 120
        while (run / ".lock").read_text().strip() != str(first.pid):
            assert first.poll() is None and time.time() < deadline, first.communicate()
            time.sleep(0.1)
        second = run_cli("fit", "--quiet", "--resume", str(run), *more)
        assert second.returncode == 2
        assert f"in use by pid {first.pid}" in error_line(second.stderr)
        assert first.poll() is None  # refused while the first still trains
        _, err = first.communicate(timeout=600)
    finally:
        first.kill()
    assert first.returncode == 0, err
    steps = [json.loads(line)["step"] for line in (run / "eval.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 12  # no eval twice
    assert not list((run / "checkpoints").glob("*-v1.ckpt"))
    # 3. the run's own config is kept; the resume's change is recorded beside it
    assert load_config(None, [run / "config.yaml"]).train.max_steps == 2
    record = saved_config(run)
    assert record.name.startswith("resume-") and "train.max_steps: 2 -> 12" in record.read_text()
    assert load_config(None, [record]).train.max_steps == 12


# 2. a failed run leaves no folder holding only its config


def test_closing_removes_only_folders_without_work(tmp_path: Path) -> None:
    cfg = load_config("mopd", [], [f"run.out_dir={tmp_path}"])
    kept = {}
    for work in (None, "checkpoints/last.ckpt", "eval.jsonl", "logs/metrics.csv"):
        inputs = _inputs(cfg)
        run = inputs.open_run_dir()
        assert (run / "config.yaml").is_file() and (run / ".lock").is_file()
        if work:
            (run / work).parent.mkdir(parents=True, exist_ok=True)
            (run / work).write_text("x")
        inputs.close_run_dir()
        kept[work] = run.exists()
    assert kept == {None: False, "checkpoints/last.ckpt": True, "eval.jsonl": True, "logs/metrics.csv": True}
    given = tmp_path / "given"  # a folder this process did not make (a resume) is never removed
    given.mkdir()
    (given / "config.yaml").write_text(to_yaml(cfg))
    inputs = _inputs(cfg)
    inputs.open_run_dir(resume=given)
    inputs.close_run_dir()
    assert (given / "config.yaml").is_file()


def test_failed_cli_run_leaves_no_folder(tiny_lab, tiny_overrides, tmp_path: Path) -> None:
    """A student whose config.json was edited fails after the run folder is made (6, then 2)."""
    student = tmp_path / "student"
    subprocess.run(["cp", "-r", str(tiny_lab / "models" / "stage1"), str(student)], check=True)
    config = json.loads((student / "config.json").read_text())
    rows = config["vocab_size"]
    config["vocab_size"] = rows + 50
    (student / "config.json").write_text(json.dumps(config))
    out = tmp_path / "runs"
    proc = run_cli("fit", "--quiet", *tiny_overrides, f"run.out_dir={out}", f"model.student={student}")
    assert proc.returncode == 2
    line = error_line(proc.stderr)
    assert str(student) in line and f"vocab_size={rows + 50}" in line and f"set vocab_size back to {rows}" in line
    assert "above report" not in line
    assert not out.exists() or not list(out.iterdir())


# 3. a resume records its changes and keeps config.yaml


def test_resume_records_changes_beside_the_config(tmp_path: Path) -> None:
    run = tmp_path / "run"
    first = load_config("mopd", [], [f"run.out_dir={tmp_path}", "run.name=run", "train.max_steps=5"])
    inputs = _inputs(first)
    inputs.open_run_dir(run_dir=run)
    original = (run / "config.yaml").read_text()
    release_run_dir(run, discard_if_empty=False)  # only config.yaml: closing would remove it
    for steps in (9, 12):
        cfg = load_config(None, [saved_config(run)], [f"train.max_steps={steps}", "optim.lr=0.5"])
        _inputs(cfg).open_run_dir(resume=run)
        release_run_dir(run, discard_if_empty=False)
    assert (run / "config.yaml").read_text() == original
    records = sorted(run.glob("resume-*.yaml"), key=lambda p: p.stat().st_mtime_ns)
    assert len(records) == 2
    assert "train.max_steps: 5 -> 9" in records[0].read_text() and "optim.lr" in records[0].read_text()
    assert "train.max_steps: 9 -> 12" in records[1].read_text() and "optim.lr" not in records[1].read_text()
    assert saved_config(run) == records[1] and load_config(None, [records[1]]).train.max_steps == 12
    # a resume that changes nothing records nothing
    _inputs(load_config(None, [saved_config(run)])).open_run_dir(resume=run)
    release_run_dir(run, discard_if_empty=False)
    assert len(list(run.glob("resume-*.yaml"))) == 2


# 4. YAML errors say where


def test_yaml_error_names_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  max_steps: 5\noptim:\n  betas: [0.9, 0.98\n  lr: 1\n")
    with pytest.raises(ConfigError) as exc:
        load_config("mopd", [bad])
    msg = str(exc.value)
    assert str(bad) in msg and "line 5" in msg and "line 4" in msg and "\n" not in msg
    tabs = tmp_path / "tabs.yaml"
    tabs.write_text("train:\n\tmax_steps: 5\n")
    with pytest.raises(ConfigError, match=r"tabs\.yaml, line 2, column 1"):
        load_config("mopd", [tabs])


# 5. config show, and the unknown-key message that points to it


def test_config_show_prints_every_key(capsys) -> None:
    assert cli.main(["config", "show", "--strategy", "camopd", "train.max_steps=7"]) == 0
    out = capsys.readouterr().out
    assert "name: camopd" in out and "max_steps: 7" in out and "lr:" in out


@pytest.mark.parametrize("key,suggestion", [("optim.lrr", "optim.lr"), ("train.max_stepz", "train.max_steps"), ("train.lr", "optim.lr"), ("optm.lr", "optim")])
def test_unknown_key_suggests_the_closest(key: str, suggestion: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config("mopd", [], [f"{key}=1"])
    assert f"did you mean '{suggestion}'?" in str(exc.value) and "python -m mopdx config show" in str(exc.value)


def test_unknown_key_without_a_close_one() -> None:
    with pytest.raises(ConfigError) as exc:
        load_config("mopd", [], ["strategy.zebra=1"])
    assert "did you mean" not in str(exc.value) and "config show" in str(exc.value)


# 6. an edited vocab_size


def test_edited_vocab_size_is_named(tiny_model_factory, tiny_tokenizer, tmp_path: Path) -> None:
    from mopdx.models import load_model

    folder = tmp_path / "m"
    tiny_model_factory().save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    rows = config["vocab_size"]
    config["vocab_size"] = rows + 7
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError) as exc:
        load_model(folder, what="teacher 'add'")
    msg = str(exc.value)
    assert f"teacher 'add' from {folder}" in msg and f"vocab_size={rows + 7}" in msg and f"back to {rows}" in msg
    assert "above report" not in msg and "\n" not in msg


# 7. the restart hint of a down teacher server


def test_down_server_hint_names_teacher_port_and_key() -> None:
    port = _free_port()
    with pytest.raises(TeacherServerError) as exc:
        ServedTeacherScorer(f"http://127.0.0.1:{port}", None, timeout_s=1, retries=1, name="teacher 'sort'")
    msg = str(exc.value)
    assert "<teacher folder>" not in msg
    assert f"--port {port}" in msg and "teacher 'sort'" in msg and "model.teachers.sort" in msg


def test_server_that_went_down_hint_names_its_folder() -> None:
    """A server that said which folder it serves (vLLM's /v1/models) and then went down: the hint names that folder."""
    class Fake(BaseHTTPRequestHandler):
        def _send(self, body: dict) -> None:
            raw = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def do_GET(self) -> None:
            self._send({"data": [{"id": "teacher", "root": "/models/sort-teacher"}]})

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            self._send({"tokens": [1, 2, 3]})

        def log_message(self, *a) -> None:
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Fake)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    port = srv.server_address[1]
    scorer = ServedTeacherScorer(f"http://127.0.0.1:{port}", lambda text, add_special_tokens=False: {"input_ids": [1, 2, 3]},
                                 timeout_s=1, retries=1, name="teacher 'sort'")
    srv.shutdown()
    srv.server_close()
    with pytest.raises(TeacherServerError, match=f"serve-teacher --model /models/sort-teacher --port {port}"):
        scorer._post(f"http://127.0.0.1:{port}", "/v1/completions", {})


# 8. serve-teacher on a port in use


def test_serve_teacher_on_a_busy_port(tmp_path: Path) -> None:
    folder = tmp_path / "teacher"
    folder.mkdir()
    (folder / "config.json").write_text("{}")  # never loaded: the port is taken first
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = run_cli("serve-teacher", "--model", str(folder), "--port", str(port))
    assert proc.returncode == 2 and error_line(proc.stderr) == f"error: port {port} is in use on 127.0.0.1: pick another --port"


# 9. Ctrl-C


def test_interrupt_without_a_run_folder(monkeypatch, capsys) -> None:
    def interrupted(args) -> int:
        raise KeyboardInterrupt

    monkeypatch.setitem(cli.COMMANDS, "list-strategies", interrupted)
    assert cli.main(["list-strategies"]) == 130
    assert capsys.readouterr().err.strip() == "error: interrupted"


def test_interrupt_while_lightning_handles_it(monkeypatch, capsys, tmp_path: Path) -> None:
    """Lightning catches Ctrl-C and calls sys.exit(1); a run folder with no work yet is removed."""
    cfg = load_config("mopd", [], [f"run.out_dir={tmp_path}", "run.name=cut"])
    earlier = tmp_path / "earlier"  # a run this process opened before: not the command's
    _inputs(cfg).open_run_dir(run_dir=earlier)
    (earlier / "eval.jsonl").write_text("{}")

    def train(args) -> int:
        _inputs(cfg).open_run_dir()
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
        except KeyboardInterrupt:
            sys.exit(1)  # what pytorch_lightning.trainer.call does
        return 0

    monkeypatch.setitem(cli.COMMANDS, "list-strategies", train)
    assert cli.main(["list-strategies"]) == 130
    assert capsys.readouterr().err.strip() == "error: interrupted"
    assert not (tmp_path / "cut").exists()
    release_run_dir(earlier)


@pytest.mark.slow
def test_ctrl_c_during_training_says_where_to_resume(tiny_lab, tiny_overrides, tmp_path: Path) -> None:
    run = tmp_path / "runs" / "long"
    proc = subprocess.Popen(
        [sys.executable, "-m", "mopdx", "fit", "--quiet", *tiny_overrides, f"run.out_dir={tmp_path / 'runs'}", "run.name=long",
         "train.max_steps=1000", "train.eval_every=0", "train.ckpt_every=1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "TQDM_DISABLE": "1"},
    )
    try:
        deadline = time.time() + 300
        while not (run / "checkpoints" / "last.ckpt").is_file():
            assert proc.poll() is None and time.time() < deadline, proc.communicate()
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    line = error_line(err)
    assert line.startswith("error: interrupted at step ") and line.endswith(f"resume with python -m mopdx fit --resume {run}")
