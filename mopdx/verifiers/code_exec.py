"""``code``: run the completion's program with the task's tests; correct iff it exits 0 in time.

Why a separate, limited process per sample: the student writes the code, and
early in training much of it loops forever, eats memory, crashes or calls
``exit()``.  Each of those must be one *failed sample*, never a hung or dead
trainer, so every program runs in its own ``python -I`` child (isolated mode:
no ``PYTHON*`` variables, no user site, not the caller's ``sys.path``) in a
fresh temporary folder with ``stdin`` at ``/dev/null`` and a minimal
environment, under these limits:

* wall clock ``timeout_s`` in the parent, then ``SIGKILL`` to the child's whole
  process group (``start_new_session``), which also ends anything it spawned;
* ``RLIMIT_CPU`` about ``timeout_s``, ``RLIMIT_AS`` ``memory_mb`` (a hog gets
  ``MemoryError``), ``RLIMIT_FSIZE`` ``OUTPUT_BYTES`` (stdout and stderr go to
  files, so huge output kills the child, not the parent's memory);
* no network: before user code runs, the child's prelude replaces
  ``socket.socket`` (all but ``AF_UNIX``), ``create_connection``,
  ``getaddrinfo`` and friends with functions that raise, so a connection fails
  at once instead of hanging;
* no new processes: ``os.fork``, ``os.system``, ``posix_spawn`` and the
  ``subprocess`` launcher raise.  ``RLIMIT_NPROC`` is not used: it counts every
  process of the user (the trainer's included) and root ignores it.

The reference answer is the test code (``assert`` statements), run after the
completion's code in the same program.  Passing means exit status 0 *and* a
random per-run token, printed by the runner only after the tests finished, as
the last line of stdout: ``sys.exit(0)``, ``os._exit(0)`` or ``os.execv`` before
the tests would otherwise read as a pass.  The token comes through a pipe that
is closed before user code runs.

This is a guard against accidents, not a security sandbox: code that means harm
can undo an in-process guard (``ctypes``, frame inspection).  For untrusted
code use containers.  A Linux network namespace (``unshare``) is not used
because it needs privileges a training job usually lacks.
"""

from __future__ import annotations

import math
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from mopdx.errors import ConfigError

OUTPUT_BYTES = 1 << 20  # RLIMIT_FSIZE: the most a program may write to one file (its stdout included)
TAIL_CHARS = 2000  # how much of stdout / stderr a RunResult keeps
PYTHON_TAGS = {"python", "py", "python3", "py3"}
_FENCE = re.compile(r"^[ \t]*(`{3,}|~{3,})[ \t]*([^\s`]*)[^`]*$")

# The child's prelude: limits, guards, then the program, then the token.  argv: fd mem_bytes cpu_s fsize_bytes.
RUNNER = r'''
import os, resource, sys, traceback
def _main():
    fd, mem, cpu, fsize = (int(a) for a in sys.argv[1:5])
    token = os.read(fd, 256).decode()
    os.close(fd)
    for lim, soft, hard in ((resource.RLIMIT_AS, mem, mem), (resource.RLIMIT_CPU, cpu, cpu + 1), (resource.RLIMIT_FSIZE, fsize, fsize)):
        cap = resource.getrlimit(lim)[1]
        if cap != resource.RLIM_INFINITY:
            soft, hard = min(soft, cap), min(hard, cap)
        resource.setrlimit(lim, (soft, hard))
    import socket, _socket, _posixsubprocess
    def _no_net(*a, **k):
        raise PermissionError("network access is disabled in the code verifier")
    def _no_proc(*a, **k):
        raise PermissionError("starting processes is disabled in the code verifier")
    class _Guarded(socket.socket):
        def __init__(self, family=-1, type=-1, proto=-1, fileno=None):
            if fileno is None and family != socket.AF_UNIX:
                _no_net()
            super().__init__(family, type, proto, fileno)
    _raw = _socket.socket
    class _GuardedRaw(_raw):  # socket.py calls _socket.socket.__init__ by name, so no super() here
        def __init__(self, family=-1, type=-1, proto=-1, fileno=None):
            if fileno is None and family != socket.AF_UNIX:
                _no_net()
            _raw.__init__(self, family, type, proto, fileno)
    socket.socket, socket.SocketType, _socket.socket, _socket.SocketType = _Guarded, _Guarded, _GuardedRaw, _GuardedRaw
    for mod in (socket, _socket):
        for name in ("create_connection", "create_server", "getaddrinfo", "gethostbyname", "gethostbyname_ex", "gethostbyaddr", "getnameinfo"):
            if hasattr(mod, name):
                setattr(mod, name, _no_net)
    for name in ("fork", "forkpty", "system", "posix_spawn", "posix_spawnp", "popen", "execv", "execve"):
        if hasattr(os, name):
            setattr(os, name, _no_proc)
    _posixsubprocess.fork_exec = _no_proc
    with open("program.py", encoding="utf-8") as f:
        source = f.read()
    try:
        exec(compile(source, "program.py", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
    sys.stdout.write("\n" + token + "\n")
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
_main()
'''


@dataclass
class RunResult:
    """One program's run: ``passed`` is the grade; the rest says why (``python -m mopdx verify`` and debugging)."""

    passed: bool
    returncode: int | None  # None: killed at the wall-clock limit (or never started)
    timed_out: bool
    seconds: float
    stdout: str  # tails, at most TAIL_CHARS each
    stderr: str
    error: str = ""  # the parent could not run it at all (OSError)


def _blocks(text: str) -> list[tuple[str, str]]:
    """Every fenced block of ``text`` as ``(tag, code)``; an unclosed last block runs to the end."""
    out: list[tuple[str, str]] = []
    fence: str | None = None
    tag, body = "", []
    for line in text.splitlines():
        if fence is None:
            m = _FENCE.match(line)
            if m:
                fence, tag, body = m.group(1), m.group(2).lower(), []
        elif re.fullmatch(rf"[ \t]*{re.escape(fence[0])}{{{len(fence)},}}[ \t]*", line):
            out.append((tag, textwrap.dedent("\n".join(body))))
            fence = None
        else:
            body.append(line)
    if fence is not None:
        out.append((tag, textwrap.dedent("\n".join(body))))
    return out


def extract_code(completion: str) -> str | None:
    """The code of ``completion``: its last ```` ```python ```` / ```` ```py ```` block, else its last untagged one.

    Fences are ``` or ~~~ (3 or more) at the start of a line; a block still open
    at the end of the text (a truncated completion) runs to the end.  Blocks
    tagged with another language (```` ```text ````, ```` ```bash ````) are skipped, and
    a tagged Python block outranks an untagged one because models often follow
    their solution with an untagged example or output.  No block: ``None``
    (graded wrong -- prose is not run as code)."""
    blocks = _blocks(completion)
    for wanted in (lambda t: t in PYTHON_TAGS, lambda t: t == ""):
        found = [code for tag, code in blocks if wanted(tag)]
        if found:
            return found[-1]
    return None


def _tail(path: str) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 4 * TAIL_CHARS))
            return f.read().decode("utf-8", "replace")[-TAIL_CHARS:]
    except OSError:
        return ""


class CodeVerifier:
    """``code``: the completion's code, then the reference's tests, in a limited child process (module docstring).

    ``timeout_s``: wall-clock limit per program; ``memory_mb``: its address
    space; ``workers``: programs at once in ``verify_batch`` (0: ``os.cpu_count()``);
    ``language``: only ``python``."""

    def __init__(self, timeout_s: float = 5.0, memory_mb: int = 512, workers: int = 0, language: str = "python") -> None:
        if language != "python":
            raise ConfigError(f"verifier 'code': language={language!r}; only 'python' is supported")
        if not (float(timeout_s) > 0 and int(memory_mb) >= 64 and int(workers) >= 0):
            raise ConfigError(f"verifier 'code': timeout_s={timeout_s}, memory_mb={memory_mb}, workers={workers}; "
                              "need timeout_s > 0, memory_mb >= 64, workers >= 0")
        self.timeout_s, self.memory_mb, self.language = float(timeout_s), int(memory_mb), language
        self.workers = int(workers) or os.cpu_count() or 1

    def extract(self, completion: str) -> str | None:
        return extract_code(completion)

    def check_answer(self, answer: str) -> str | None:
        """Why ``answer`` cannot grade anything: no tests, or tests that are not valid Python; else ``None``."""
        if not answer.strip():
            return "a code task needs tests in its answer (Python asserts run after the completion's code)"
        try:
            compile(answer, "tests", "exec")
        except (SyntaxError, ValueError) as exc:
            return f"the tests in the answer are not valid Python ({type(exc).__name__}: {exc})"
        return None

    def leaks(self, feedback: str, answer: str) -> bool:
        """True when a line of the tests (stripped, 8+ characters, not an import) occurs verbatim in ``feedback``.

        A test line is the answer of a code task: feedback quoting
        ``assert add(2, 3) == 5`` tells the student what the grader checks, so
        a solution could special-case it.  Short lines and imports reveal nothing."""
        for line in answer.splitlines():
            s = line.strip()
            if len(s) >= 8 and not s.startswith(("import ", "from ", "#")) and s in feedback:
                return True
        return False

    def run(self, answer: str, completion: str) -> RunResult:
        """Run the completion's code and then the tests in ``answer``; never raises for what the program does."""
        code = self.extract(completion)
        if code is None:
            return RunResult(False, None, False, 0.0, "", "", "no fenced code block in the completion")
        return self.run_code(code, answer)

    def run_code(self, code: str, tests: str) -> RunResult:
        """``code`` then ``tests`` as one program in a limited child (see the module docstring)."""
        token = secrets.token_hex(16)
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="mopdx-code-", ignore_cleanup_errors=True) as tmp:
            out_path, err_path = os.path.join(tmp, "stdout"), os.path.join(tmp, "stderr")
            with open(os.path.join(tmp, "program.py"), "w", encoding="utf-8") as f:
                f.write(code + "\n\n" + tests + "\n")
            with open(os.path.join(tmp, "runner.py"), "w", encoding="utf-8") as f:
                f.write(RUNNER)
            env = {"PATH": "/usr/bin:/bin", "HOME": tmp, "TMPDIR": tmp, "LANG": "C.UTF-8", "PYTHONIOENCODING": "utf-8",
                   "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
            argv = [sys.executable, "-I", "runner.py", "0", str(self.memory_mb << 20),
                    str(max(1, math.ceil(self.timeout_s)) + 1), str(OUTPUT_BYTES)]
            read_fd, write_fd = os.pipe()
            timed_out, rc, error = False, None, ""
            try:
                os.write(write_fd, token.encode())
                os.close(write_fd)
                argv[3] = str(read_fd)
                with open(out_path, "wb") as out, open(err_path, "wb") as err:
                    proc = subprocess.Popen(argv, cwd=tmp, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                            pass_fds=(read_fd,), start_new_session=True, close_fds=True)
                os.close(read_fd)
                read_fd = -1
                try:
                    rc = proc.wait(timeout=self.timeout_s)
                except subprocess.TimeoutExpired:
                    timed_out = True
                finally:
                    try:
                        os.killpg(proc.pid, signal.SIGKILL)  # the child if it hangs, and whatever it left behind
                    except (ProcessLookupError, PermissionError):
                        pass
                    proc.wait()
            except OSError as exc:
                error = f"could not run the program: {type(exc).__name__}: {exc}"
            finally:
                if read_fd >= 0:
                    os.close(read_fd)
            stdout, stderr = _tail(out_path), _tail(err_path)
        lines = stdout.rstrip("\n").splitlines()
        passed = rc == 0 and not timed_out and bool(lines) and lines[-1] == token
        if passed:
            stdout = stdout.rstrip("\n")[: -len(token)].rstrip("\n")
        return RunResult(passed, None if timed_out else rc, timed_out, time.perf_counter() - t0, stdout, stderr, error)

    def verify(self, answer: str, completion: str) -> bool:
        return self.run(answer, completion).passed

    def run_batch(self, answers: list[str], completions: list[str]) -> list[RunResult]:
        """``run`` over pairs, at most ``workers`` programs at once; results in input order."""
        if len(answers) != len(completions):
            raise ValueError(f"{len(answers)} answers for {len(completions)} completions")
        if len(answers) <= 1:
            return [self.run(a, c) for a, c in zip(answers, completions)]
        with ThreadPoolExecutor(max_workers=min(self.workers, len(answers)), thread_name_prefix="mopdx-code") as pool:
            return list(pool.map(self.run, answers, completions))

    def verify_batch(self, answers: list[str], completions: list[str]) -> list[bool]:
        return [r.passed for r in self.run_batch(answers, completions)]
