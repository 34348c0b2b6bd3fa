"""Throughput of the ``code`` verifier: a batch of small code tasks, some hanging, graded by ``verify_batch``.

Why: every RL step on a code domain grades its whole batch by running
programs, and a hanging sample holds a worker for the full ``timeout_s``; this
says what a batch costs per step for a worker count and a share of hangs.

Usage::

    python benchmarks/code_verifier.py --batch 64 --hang-frac 0.1 --timeout-s 2 --workers 0 --repeats 3

The batch cycles through tasks (add, reverse, fib, is_prime, max_of); about
``--hang-frac`` of it is ``while True: pass``, one in five of the rest is a
wrong solution and one in ten has no code block.  The grades must equal the
expected ones (exit status 1 otherwise).  Prints one table and writes JSON
(``benchmarks/results/code_verifier.json``) with the machine's CPU count and platform.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from mopdx.verifiers.code_exec import CodeVerifier

TASKS: list[tuple[str, str, str]] = [  # (right code, wrong code, tests)
    ("def add(a, b):\n    return a + b", "def add(a, b):\n    return a - b",
     "assert add(2, 3) == 5\nassert add(-1, 1) == 0"),
    ("def reverse(s):\n    return s[::-1]", "def reverse(s):\n    return s",
     "assert reverse('abc') == 'cba'\nassert reverse('') == ''"),
    ("def fib(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a",
     "def fib(n):\n    return n",
     "assert [fib(i) for i in range(8)] == [0, 1, 1, 2, 3, 5, 8, 13]\nassert fib(30) == 832040"),
    ("def is_prime(n):\n    return n > 1 and all(n % d for d in range(2, int(n ** 0.5) + 1))",
     "def is_prime(n):\n    return n % 2 == 1",
     "assert [n for n in range(20) if is_prime(n)] == [2, 3, 5, 7, 11, 13, 17, 19]"),
    ("def max_of(xs):\n    return max(xs)", "def max_of(xs):\n    return xs[0]",
     "assert max_of([3, 9, 2]) == 9\nassert max_of([-5]) == -5"),
]
HANG = "while True:\n    pass"


def make_batch(n: int, hang_frac: float) -> tuple[list[str], list[str], list[bool], int]:
    """``answers, completions, expected grades, hanging count``: hangs spread evenly through the batch."""
    n_hang = round(n * hang_frac)
    hangs = {round(k * n / n_hang) for k in range(n_hang)} if n_hang else set()
    answers, completions, expected = [], [], []
    for i in range(n):
        right, wrong, tests = TASKS[i % len(TASKS)]
        if i in hangs:
            code, ok = HANG, False
        elif i % 10 == 9:
            code, ok = None, False
        elif i % 5 == 3:
            code, ok = wrong, False
        else:
            code, ok = right, True
        answers.append(tests)
        completions.append("I will write the function.\n" + (f"```python\n{code}\n```\nDone." if code else "It returns the answer."))
        expected.append(ok)
    return answers, completions, expected, len(hangs)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--hang-frac", type=float, default=0.1)
    ap.add_argument("--timeout-s", type=float, default=2.0)
    ap.add_argument("--workers", type=int, default=0, help="programs at once (0: os.cpu_count())")
    ap.add_argument("--memory-mb", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/code_verifier.json"))
    args = ap.parse_args()
    verifier = CodeVerifier(timeout_s=args.timeout_s, memory_mb=args.memory_mb, workers=args.workers)
    answers, completions, expected, n_hang = make_batch(args.batch, args.hang_frac)
    times, mismatches = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        got = verifier.verify_batch(answers, completions)
        times.append(time.perf_counter() - t0)
        mismatches = [i for i, (g, e) in enumerate(zip(got, expected)) if g != e]
        if mismatches:
            break
    median = statistics.median(times)
    row: dict[str, Any] = {"batch": args.batch, "hanging": n_hang, "workers": verifier.workers, "timeout_s": args.timeout_s,
                           "seconds_median": round(median, 3), "seconds_all": [round(t, 3) for t in times],
                           "samples_per_s": round(args.batch / median, 1), "correct": sum(got), "expected_correct": sum(expected),
                           "mismatches": mismatches}
    result = {"rows": [row], "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                                         "processor": platform.processor() or platform.machine(), "python": sys.version.split()[0]},
              "memory_mb": args.memory_mb, "repeats": args.repeats}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nmachine: {os.cpu_count()} CPUs, {platform.platform()}\n")
    print("| batch | hanging | workers | timeout_s | seconds (median) | samples/s | correct / expected |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {row['batch']} | {n_hang} | {row['workers']} | {args.timeout_s:g} | {median:.2f} | {row['samples_per_s']:.1f} "
          f"| {row['correct']} / {row['expected_correct']} |")
    if mismatches:
        print(f"\ngrades differ from the expected ones at {mismatches}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
