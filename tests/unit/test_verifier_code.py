"""The ``code`` verifier: what it reads from a completion, and that no program can hang or fool it."""

from __future__ import annotations

import time

import pytest

from mopdx.errors import ConfigError
from mopdx.verifiers import build
from mopdx.verifiers.base import verify_many
from mopdx.verifiers.code_exec import CodeVerifier, extract_code

TESTS = "assert add(2, 3) == 5\nassert add(-1, 1) == 0"
ADD = "def add(a, b):\n    return a + b"
TIMEOUT = 1.5
V = CodeVerifier(timeout_s=TIMEOUT, workers=4)


def fenced(code: str, tag: str = "python") -> str:
    return f"Here is my solution.\n```{tag}\n{code}\n```\nIt adds the numbers."


@pytest.mark.parametrize(("completion", "ok"), [
    (fenced(ADD), True),
    (fenced(ADD, ""), True),  # no language tag
    (fenced(ADD, "py"), True),
    (f"~~~python\n{ADD}\n~~~", True),
    (f"Truncated:\n```python\n{ADD}\n", True),  # no closing fence
    (fenced("def add(a, b):\n    return a - b"), False),
    (ADD, False),  # prose / bare code is not run
    (fenced("def add(a, b)\n    return a + b"), False),  # syntax error
])
def test_grades(completion: str, ok: bool) -> None:
    assert V.verify(TESTS, completion) is ok


def test_extract_rules() -> None:
    assert extract_code("no code here, add(a, b) = a + b") is None
    two = fenced("def add(a, b):\n    return 0") + "\nFixed:\n" + fenced(ADD)
    assert extract_code(two) == ADD and V.verify(TESTS, two)
    # a tagged Python block outranks a later untagged example or a block in another language
    shown = fenced(ADD) + "\nExample:\n```\n>>> add(2, 3)\n5\n```\n```bash\npython add.py\n```"
    assert extract_code(shown) == ADD
    assert extract_code("1. code:\n    ```python\n    x = 1\n    ```") == "x = 1"  # indented fence, dedented body
    assert V.extract("```text\nhello\n```") is None


def test_early_exit_is_not_a_pass() -> None:
    # exit status 0 without the runner's token after the tests: os._exit / sys.exit / exec before the asserts ran
    for code in ("import os\nos._exit(0)", "import sys\nsys.exit(0)", "exit()",
                 "import ctypes\nctypes.CDLL(None).execl(b'/bin/true', b'true', None)"):
        assert not V.verify(TESTS, fenced(code)), code
    r = V.run(TESTS, fenced("print('hello')\n" + ADD))
    assert r.passed and r.returncode == 0 and r.stdout.strip() == "hello"  # the token is not shown


@pytest.mark.parametrize("code", [
    "import socket\nsocket.create_connection(('127.0.0.1', 9), timeout=30)",
    "import socket\ns = socket.socket()",
    "import urllib.request\nurllib.request.urlopen('http://example.com', timeout=30)",
    "x = bytearray(10**10)",  # memory hog: MemoryError under RLIMIT_AS
    "import os\nwhile True:\n    os.fork()",  # fork bomb
    "import subprocess\nsubprocess.run(['true'])",
    "import ctypes\nctypes.string_at(0)",  # segfault
    "raise MemoryError",
])
def test_hostile_programs_fail_fast(code: str) -> None:
    t0 = time.perf_counter()
    r = V.run(TESTS, fenced(code + "\n" + ADD))
    assert not r.passed and not r.timed_out, r
    assert time.perf_counter() - t0 < TIMEOUT


def test_local_sockets_still_work() -> None:  # asyncio's event loop needs an AF_UNIX socketpair
    code = "import asyncio\nasync def two():\n    return 2\ndef add(a, b):\n    return a + b + asyncio.run(two()) - 2"
    assert V.verify(TESTS, fenced(code))


@pytest.mark.parametrize("code", ["while True:\n    pass", "while True:\n    print('x' * 10000)"])
def test_hang_and_flood_are_bounded(code: str) -> None:
    t0 = time.perf_counter()
    r = V.run(TESTS, fenced(code))
    assert not r.passed
    assert time.perf_counter() - t0 < TIMEOUT + 3
    assert len(r.stdout) <= 2000


def test_batch_in_order_with_a_hang() -> None:
    completions = [fenced(ADD), fenced("while True: pass"), fenced("def add(a, b):\n    return a * b"), "no code",
                   fenced(ADD, ""), fenced("import os\nos._exit(0)")]
    t0 = time.perf_counter()
    got = verify_many(V, [TESTS] * len(completions), completions)
    assert got == [True, False, False, False, True, False]
    assert time.perf_counter() - t0 < TIMEOUT + 3  # the hang runs beside the others
    assert V.verify_batch([], []) == []
    with pytest.raises(ValueError):
        V.verify_batch([TESTS], [])


def test_check_answer_and_leaks() -> None:
    assert "needs tests" in V.check_answer("")
    assert V.check_answer("  \n") is not None
    assert V.check_answer("assert f(1)==2") is None
    assert "not valid Python" in V.check_answer("assert f(1) ==")
    assert V.leaks("Your code fails: assert add(2, 3) == 5", TESTS)
    assert not V.leaks("Check negative numbers.", TESTS)
    assert not V.leaks("Remember to import math", "import math\nassert f(2) == 4")


def test_built_from_the_table() -> None:
    v = build({"name": "code", "timeout_s": 2, "workers": 1})
    assert isinstance(v, CodeVerifier) and v.timeout_s == 2.0 and v.workers == 1
    assert CodeVerifier().workers >= 1
    with pytest.raises(ConfigError, match="only 'python'"):
        build({"name": "code", "language": "rust"})
    with pytest.raises(ConfigError, match="timeout_s"):
        build({"name": "code", "timeout_s": 0})
