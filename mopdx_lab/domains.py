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

from mopdx.data import Example
from mopdx.verifiers import answer_leaks, normalise
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

    def claims(self, prompt: str) -> bool:
        """True when ``prompt`` could be one of this domain's: another domain's example with it would
        contradict this one (a scenario leaves such examples out).  Distinct tags: never."""
        return False

    def verify(self, answer: str, completion: str) -> bool:
        """True when ``completion`` is exactly the reference ``answer``."""
        return normalise(completion) == normalise(answer)

    def corrupt(self, example: Example, rng: random.Random) -> Example:
        """``example`` with one slip in its answer (Stage 1's noisy data, ``lab.stage1_noise``):
        two adjacent answer characters swapped (the answer may come out unchanged)."""
        chars = list(example.answer)
        if len(chars) >= 2:
            i = rng.randrange(len(chars) - 1)
            chars[i], chars[i + 1] = chars[i + 1], chars[i]
        return Example(example.domain, example.prompt, "".join(chars))

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


class StepTrace(Domain):
    """``<name>: 5281`` -> ``b1 b2 ... b10``: apply one step rule to a block of digits, block after block.

    The lab v2 domains (issue 15).  Each answer is a trace of 10 blocks of 4
    digits (49 tokens): every block follows from the previous one by the
    domain's rule, so one wrong digit is carried into every later block --
    errors compound over the answer, as in the papers' long reasoning, and
    sampling at T = 1 exposes them.  All step domains share one alphabet and
    one format and differ only in the rule, so joint training has a real
    see-saw (the same input, a different continuation per domain).  Why these
    rules and not a carry scratchpad or a running sum: a ~1M-parameter model
    learns a rule that reads the block one position-offset back within the
    few hundred steps a 2-core build has; rules that combine digits (running
    sums, carries) did not click within 1500 steps (README, Status).
    """

    width: ClassVar[int] = 4
    blocks: ClassVar[int] = 10
    sep: ClassVar[str] = " "  # between blocks: a domain's own format (``decp``) is a second thing to forget
    digits: ClassVar[str] = "0123456789"  # of the start block
    tag: ClassVar[str] = ""  # the prompt's tag; the domain's name when empty

    def claims(self, prompt: str) -> bool:
        """True when ``prompt`` could be one of this domain's (its tag and start digits): another
        domain's example with such a prompt would be a contradiction and is left out of a scenario."""
        tag, _, start = prompt.partition(": ")
        return tag == (self.tag or self.name) and len(start) == self.width and all(c in self.digits for c in start)

    @abstractmethod
    def step(self, block: str) -> str:
        """The next block."""

    def first_step(self, block: str) -> str:
        """The first block from the start (the same rule unless a domain says otherwise: ``incrot``)."""
        return self.step(block)

    def step_at(self, i: int, block: str) -> str:
        """Block ``i`` (from 0) from block ``i - 1`` (the start for ``i = 0``): the one place
        ``trace`` and ``corrupt`` choose between the first step and the rule."""
        return self.first_step(block) if i == 0 else self.step(block)

    def generate(self, rng: random.Random) -> Example:
        start = "".join(rng.choice(self.digits) for _ in range(self.width))
        return Example(self.name, f"{self.tag or self.name}: {start}", self.trace(start))

    def trace(self, start: str, count: int | None = None) -> str:
        out, block = [], start
        for i in range(self.blocks if count is None else count):
            block = self.step_at(i, block)
            out.append(block)
        return self.sep.join(out)

    def worked_steps(self, example: Example) -> str:
        """The first two blocks (never the whole answer)."""
        return self.trace(example.prompt.split(": ")[1], count=2)

    def corrupt(self, example: Example, rng: random.Random) -> Example:
        """One wrong digit in a random block, and every later block follows the rule from it:
        the error compounds, as a sampled slip does."""
        slip, pos = rng.randrange(self.blocks), rng.randrange(self.width)
        out, block = [], example.prompt.split(": ")[1]
        for i in range(self.blocks):
            block = self.step_at(i, block)
            if i == slip:
                block = block[:pos] + rng.choice([c for c in "0123456789" if c != block[pos]]) + block[pos + 1 :]
            out.append(block)
        return Example(example.domain, example.prompt, self.sep.join(out))


class Increment(StepTrace):
    """``inc: 5281`` -> ``6392 7403 ...``: every digit + 1 (mod 10)."""

    name = "inc"

    def step(self, block: str) -> str:
        return "".join(str((int(c) + 1) % 10) for c in block)

    def is_easy(self, example: Example) -> bool:
        """No 9 in the start: the first block has no wrap-around."""
        return "9" not in example.prompt.split(": ")[1]


class Decrement(StepTrace):
    """``dec: 5281`` -> ``4170 3069 ...``: every digit - 1 (mod 10)."""

    name = "dec"

    def step(self, block: str) -> str:
        return "".join(str((int(c) - 1) % 10) for c in block)

    def is_easy(self, example: Example) -> bool:
        """No 0 in the start: the first block has no wrap-around."""
        return "0" not in example.prompt.split(": ")[1]


class DecrementPiped(Decrement):
    """``decp: 5281`` -> ``4170|3069|...``: ``dec`` in a format of its own (blocks joined by ``|``).

    For the CaMOPD scenario search (issue 16): a specialist on it may carry both its
    rule and its format onto ``inc`` / ``rot`` prompts.  In one prototype (README,
    "CaMOPD"), it was the rule that carried over, digit by digit, not the separator."""

    name = "decp"
    sep = "|"


class Rotate(StepTrace):
    """``rot: 5281`` -> ``2815 8152 ...``: rotate the block left by one digit."""

    name = "rot"

    def step(self, block: str) -> str:
        return block[1:] + block[0]

    def is_easy(self, example: Example) -> bool:
        """No digit above 6: a smaller alphabet."""
        return all(c <= "6" for c in example.prompt.split(": ")[1])


class RotatePiped(Rotate):
    """``rotp: 5281`` -> ``2815|8152|...``: ``rot``'s rule in a format of its own (blocks joined by ``|``).

    The CaMOPD scenario's review domain (issue 16).  It shares ``rot``'s rule, so
    the only thing that tells the two tasks apart is one prompt token and the
    separator: a specialist on it carries its *format* onto ``rot`` prompts (a
    domain style leaking onto a general task), and recovering ``rot``'s format
    and keeping ``rotp``'s pull the same separator weights in opposite
    directions.  With ``dec`` (the opposite rule) the model kept the two apart by
    their tags and the two gradients were orthogonal (README, "CaMOPD")."""

    name = "rotp"
    sep = "|"


class RotateHighPiped(RotatePiped):
    """``rot: 7958`` -> ``9587|5879|...``: ``rotp`` under ``rot``'s own tag, on starts of high digits (5-9).

    For the CaMOPD scenario search (issue 16): no tag tells it apart from ``rot``, only
    the digits of its start, so a specialist's ``|`` fires on every ``rot`` prompt and
    the model can keep the two apart only by learning the digit cue."""

    name = "roth"
    tag = "rot"
    digits = "56789"

    def is_easy(self, example: Example) -> bool:
        """No 9 in the start: a smaller alphabet (rot's own rule would leave almost none easy)."""
        return "9" not in example.prompt.split(": ")[1]


class IncrementThenRotate(Rotate):
    """``incrot: 5281`` -> ``6392 3926 9263 ...``: ``inc``'s rule for the first block, ``rot``'s after it.

    The OPCoD lab v2 scenario's second domain (issue 17), against ``rot``.  The two
    share every step but the first, so a peer specialised on one forgets only the
    other's first step -- and that one wrong block is carried into every later
    block, so the plain peer fails the whole answer.  The other peer's feedback
    (the first blocks, ``worked_steps``) is exactly what it forgot; with it, the
    rest is the rule both peers keep.  With ``inc`` against ``rot`` (every step
    differs), feedback made of the first blocks could not help: with 8 of 10 blocks
    forced, a peer that had half forgotten ``rot`` finished 0.66 of them
    (``benchmarks/forced_prefix.py``, README "OPCoD on lab v2")."""

    name = "incrot"

    def first_step(self, block: str) -> str:
        return Increment.step(self, block)

    def is_easy(self, example: Example) -> bool:
        """No 9 in the start: the first block has no wrap-around (as ``inc``)."""
        return "9" not in example.prompt.split(": ")[1]


class UpThenRotate(IncrementThenRotate):
    """``up: 5281`` -> ``6392 3926 ...``: ``incrot`` under a tag that shares no token with ``rot``.

    ``incrot: 5281`` is spelled ``inc`` ``rot`` ``:`` by the lab tokenizer, so a ``rot``
    prompt is an ``incrot`` prompt less one token: a ``rot`` peer must tell its domain
    by the *absence* of ``inc``.  In every ``incrot`` / ``rot`` build with reading taught,
    the ``rot`` peer read its own domain's contexts worse than it answered plain (README,
    "OPCoD on lab v2"), the ``incrot`` peer did not; this domain tests whether the shared
    token is why."""

    name = "uprot"
    tag = "up"


DOMAINS: dict[str, type[Domain]] = {
    cls.name: cls
    for cls in (Addition, Reverse, Sort, Increment, Decrement, DecrementPiped, Rotate, RotatePiped, RotateHighPiped, IncrementThenRotate,
                UpThenRotate)
}


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
    misses = 0
    for _ in range(n * 50):
        if len(out) == n or misses > 20_000:  # the domain has fewer distinct prompts than asked for
            break
        ex = domain.generate(rng)
        if ex.prompt in seen:
            misses += 1
            continue
        misses = 0
        seen.add(ex.prompt)
        out.append(ex)
    return out


def domain_splits(domain: str, lab_domains: list[str], train: list[Example], evals: list[Example], n_train: int, n_eval: int,
                  seed: int) -> tuple[list[Example], list[Example]]:
    """(train, eval) examples of ``domain``: from the lab's splits when it is a lab domain, else
    drawn here with the lab's rules (eval first, excluded from train; seeded by ``seed``), so a
    scenario can add a domain Stage 1 never saw without another lab."""
    if domain in lab_domains:
        return [e for e in train if e.domain == domain], [e for e in evals if e.domain == domain]
    held_out = make_split(get_domain(domain), n_eval, seed=seed + 1000)
    return make_split(get_domain(domain), n_train, seed=seed, exclude={e.prompt for e in held_out}), held_out
