"""Synthetic task domains with exact verifiers.

Each domain is small enough for a ~1M-parameter model to learn in minutes on
a CPU, yet hard enough that a briefly trained generalist is measurably worse
than a specialist: that gap is what distillation has to close.  Payload
symbols are space-separated so the lab tokenizer gives one token per symbol.
"""

from __future__ import annotations

import random
import string
from abc import ABC, abstractmethod
from typing import ClassVar

from mopdx.data import Example, answer_leaks, normalise
from mopdx.errors import ConfigError


class Domain(ABC):
    """A task family: a seeded generator and an exact verifier (a ``mopdx.data.Verifier``)."""

    name: ClassVar[str]

    @abstractmethod
    def generate(self, rng: random.Random) -> Example:
        """Draw one example using only ``rng`` (so splits are reproducible)."""

    def is_easy(self, example: Example) -> bool:
        """The easy part of the domain: Stage 1 (the generalist) only sees these.

        Restricting the generalist to easy instances (short inputs, small
        operands) while specialists and evaluation cover the whole domain gives
        every domain a clear student -> teacher gap, independent of when a tiny
        model happens to "click" on a task.
        """
        return True

    def verify(self, answer: str, completion: str) -> bool:
        """True when ``completion`` is exactly the reference ``answer``."""
        return normalise(completion) == normalise(answer)

    def worked_steps(self, example: Example) -> str:
        """Short worked steps for ``example`` that stop short of the answer (OPCoD feedback).

        Tiny models can learn to write and to use these, which is what makes
        peer feedback meaningful in the lab.  May leak the answer on trivial
        instances; :meth:`leaks` catches that.
        """
        return ""

    def leaks(self, feedback: str, answer: str) -> bool:
        """Task-specific check: does ``feedback`` give the final answer away?"""
        return answer_leaks(feedback, answer)


class Addition(Domain):
    """``add: 17 + 25`` -> ``42``: multi-digit addition with carries.

    Digits are written unspaced; the tokenizer splits them one per token.
    Operands are small by default (0-29): a ~1M-parameter specialist then
    reaches useful accuracy in a few hundred SFT steps, which two-digit
    operands up to 99 do not allow.
    """

    name = "add"

    def __init__(self, max_value: int = 29) -> None:
        self.max_value = max_value

    def generate(self, rng: random.Random) -> Example:
        a, b = rng.randint(0, self.max_value), rng.randint(0, self.max_value)
        return Example(self.name, f"add: {a} + {b}", str(a + b))

    def is_easy(self, example: Example) -> bool:
        a, b = example.prompt.split(": ")[1].split(" + ")
        return max(int(a), int(b)) <= self.max_value // 2

    def worked_steps(self, example: Example) -> str:
        """Column sums with carries: ``17 + 25`` -> ``7+5=12 1+2+1=4``.

        On one-digit sums (``3 + 4`` -> ``3+4=7``) this states the answer: the
        leak check masks it.
        """
        a, b = (int(x) for x in example.prompt.split(": ")[1].split(" + "))
        ua, ub, u = a % 10, b % 10, a % 10 + b % 10
        steps = f"{ua}+{ub}={u}"
        ta, tb = a // 10, b // 10
        if ta or tb or u >= 10:
            steps += f" {ta}+{tb}+{u // 10}={ta + tb + u // 10}"
        return steps


class _LetterTask(Domain):
    """Tasks over a space-separated sequence of letters of random length."""

    def __init__(self, min_len: int = 3, max_len: int = 6, alphabet: str = string.ascii_lowercase[:12]) -> None:
        self.min_len, self.max_len, self.alphabet = min_len, max_len, alphabet

    def letters(self, rng: random.Random) -> list[str]:
        return [rng.choice(self.alphabet) for _ in range(rng.randint(self.min_len, self.max_len))]

    def is_easy(self, example: Example) -> bool:
        return len(example.prompt.split(": ")[1].split()) <= (self.min_len + self.max_len) // 2


class Reverse(_LetterTask):
    """``reverse: c a f`` -> ``f a c``."""

    name = "reverse"

    def worked_steps(self, example: Example) -> str:
        """The ends of the answer: ``reverse: c a f`` -> ``f .. c``."""
        chars = example.prompt.split(": ")[1].split()
        return f"{chars[-1]} .. {chars[0]}"

    def leaks(self, feedback: str, answer: str) -> bool:
        """Leaks when the feedback's single letters, in order, spell the answer."""
        letters = " ".join(t for t in feedback.split() if len(t) == 1 and t.isalpha())
        return normalise(answer) in letters

    def generate(self, rng: random.Random) -> Example:
        chars = self.letters(rng)
        return Example(self.name, "reverse: " + " ".join(chars), " ".join(reversed(chars)))


class Sort(Domain):
    """``sort: 5281`` -> ``1258``: sort the digits (unspaced; one token per digit).

    Digits rather than letters keep its inputs distinct from ``reverse``, so
    the two tasks do not compete for the same input patterns in a tiny model.
    """

    name = "sort"

    def __init__(self, min_len: int = 3, max_len: int = 6) -> None:
        self.min_len, self.max_len = min_len, max_len

    def generate(self, rng: random.Random) -> Example:
        digits = [str(rng.randint(0, 9)) for _ in range(rng.randint(self.min_len, self.max_len))]
        return Example(self.name, "sort: " + "".join(digits), "".join(sorted(digits)))

    def is_easy(self, example: Example) -> bool:
        return len(example.prompt.split(": ")[1]) <= (self.min_len + self.max_len) // 2

    def worked_steps(self, example: Example) -> str:
        """The ends of the answer: ``sort: 5281`` -> ``1 .. 8``."""
        digits = example.prompt.split(": ")[1]
        return f"{min(digits)} .. {max(digits)}"

    def leaks(self, feedback: str, answer: str) -> bool:
        """Leaks when the feedback's digits, read in order, contain the sorted answer."""
        return normalise(answer).replace(" ", "") in "".join(ch for ch in feedback if ch.isdigit())


class Trace(Domain):
    """``trace: 52819`` -> ``63920 74031 85142 ...``: add 1 to every digit (mod 10), 8 times (47 tokens).

    A step trace: each block is the previous block with every digit plus one,
    so one wrong digit is carried into every later block -- errors compound
    over the answer, as in the papers' long reasoning traces, and sampling at
    T = 1 exposes them.  Not in the default lab (issue 15, still open): in the
    minutes a 2-core build has, a 0.5-1M-parameter Stage 1 learns the
    block-to-block rule within ~150 steps but reads the prompt's block only
    after a loss plateau of ~700 steps when trained on this domain alone, and
    not at all within 1500 steps in a mixture with ``reverse``/``sort``.
    Tried before it, and slower still: a running digit sum, an arithmetic
    progression mod 100 / 1000, a written-out carry scratchpad for 5-digit sums.
    """

    name = "trace"

    def __init__(self, width: int = 5, blocks: int = 8) -> None:
        self.width, self.blocks = width, blocks

    def generate(self, rng: random.Random) -> Example:
        start = "".join(str(rng.randint(0, 9)) for _ in range(self.width))
        return Example(self.name, f"{self.name}: {start}", self.trace(start))

    def trace(self, start: str, count: int | None = None) -> str:
        n = self.blocks if count is None else count
        return " ".join("".join(str((int(c) + i) % 10) for c in start) for i in range(1, n + 1))

    def is_easy(self, example: Example) -> bool:
        """No 9 in the start: the first block has no wrap-around."""
        return "9" not in example.prompt.split(": ")[1]

    def worked_steps(self, example: Example) -> str:
        """The first two blocks (never the whole answer)."""
        return self.trace(example.prompt.split(": ")[1], count=2)


DOMAINS: dict[str, type[Domain]] = {cls.name: cls for cls in (Addition, Reverse, Sort, Trace)}


def get_domain(name: str) -> Domain:
    """Instantiate a lab domain by name, with a clear error for unknown names."""
    if name not in DOMAINS:
        raise ConfigError(f"unknown lab domain {name!r}; known domains: {', '.join(sorted(DOMAINS))}")
    return DOMAINS[name]()


def make_split(domain: Domain, n: int, seed: int, exclude: set[str] | None = None) -> list[Example]:
    """``n`` distinct examples from ``seed``, skipping prompts in ``exclude``.

    Held-out eval splits are drawn first and passed as ``exclude`` to the
    train split, so no eval prompt is ever trained on.
    """
    rng = random.Random(f"{domain.name}:{seed}")
    seen: set[str] = set(exclude or ())
    out: list[Example] = []
    for _ in range(n * 50):
        if len(out) == n:
            break
        ex = domain.generate(rng)
        if ex.prompt not in seen:
            seen.add(ex.prompt)
            out.append(ex)
    return out
