"""Domain-labelled prompt data and the per-step prompt sampler.

``Example`` is the one data record of the framework: real data sets (read by
``mopdx.data_sources``: JSONL, Parquet, ``datasets`` folders) and the synthetic
lab (a plug-in, see ``mopdx.plugins``) both become it, and verifiers
(``mopdx.verifiers``) grade completions against its ``answer``.  The framework's
own JSONL is ``{"prompt": ..., "domain": ..., "answer": ...}`` (``answer`` is
needed only for evaluation and rewards).  Each step's prompts are a pure
function of ``(seed, step, plan)``, so a resumed run draws exactly the
prompts the uninterrupted run would have drawn, with no sampler state to
lose.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mopdx.errors import DataError


@dataclass(frozen=True)
class Example:
    """One prompt with its domain label and reference answer.

    ``system`` and ``context`` carry chat data: the system prompt and the turns
    before the prompt (``(role, content)`` pairs, e.g. few-shot examples); the
    prompt is always the last user turn, so lab data (neither) encodes as before."""

    domain: str
    prompt: str
    answer: str
    system: str = ""
    context: tuple[tuple[str, str], ...] = ()

    def messages(self) -> list[dict[str, str]]:
        """The chat the model is asked: system prompt, earlier turns, the prompt as the last user turn."""
        head = [{"role": "system", "content": self.system}] if self.system else []
        return [*head, *({"role": r, "content": c} for r, c in self.context), {"role": "user", "content": self.prompt}]

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"domain": self.domain, "prompt": self.prompt, "answer": self.answer}
        if self.system:
            out["system"] = self.system
        if self.context:
            out["context"] = [list(t) for t in self.context]
        return out

    @classmethod
    def from_json(cls, obj: dict[str, object]) -> Example:
        context = tuple((str(r), str(c)) for r, c in obj.get("context") or ())  # type: ignore[attr-defined]
        return cls(domain=str(obj["domain"]), prompt=str(obj["prompt"]), answer=str(obj.get("answer", "")), system=str(obj.get("system") or ""),
                   context=context)


def take_per_domain(examples: Sequence[Example], n: int) -> list[Example]:
    """The first ``n`` examples of each domain, in file order."""
    counts: dict[str, int] = {}
    out = []
    for ex in examples:
        if counts.get(ex.domain, 0) < n:
            counts[ex.domain] = counts.get(ex.domain, 0) + 1
            out.append(ex)
    return out


def load_prompts(path: str | Path) -> list[Example]:
    """Read a JSONL prompt file, failing clearly on missing, empty or malformed input."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"prompt file not found: {path}")
    rows: list[Example] = []
    with path.open() as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                rows.append(Example.from_json(obj))
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise DataError(f"{path}:{lineno}: expected a JSON object with 'prompt' and 'domain' ({exc})") from None
    if not rows:
        raise DataError(f"prompt file {path} is empty: it needs at least one JSON line with 'prompt' and 'domain'")
    return rows


def save_prompts(examples: Sequence[Example], path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        for ex in examples:
            fh.write(json.dumps(ex.to_json()) + "\n")


def allocate(batch_size: int, ratios: dict[str, float]) -> dict[str, int]:
    """Split ``batch_size`` by ``ratios`` (largest remainder, deterministic order)."""
    total = sum(ratios.values())
    if total <= 0:
        raise DataError(f"domain ratios {ratios} sum to zero")
    exact = {d: batch_size * r / total for d, r in ratios.items()}
    counts = {d: int(v) for d, v in exact.items()}
    left = batch_size - sum(counts.values())
    for d in sorted(exact, key=lambda d: (-(exact[d] - counts[d]), d))[:left]:
        counts[d] += 1
    return counts


def step_seed(seed: int, step: int) -> int:
    """Sampling seed of a step, so a resumed run samples what the original would have."""
    return (seed * 1_000_003 + step * 7_919) % (2**31 - 1)


class PromptPool:
    """Training prompts grouped by domain, drawn deterministically per step."""

    def __init__(self, examples: Sequence[Example], seed: int = 0) -> None:
        self.by_domain: dict[str, list[Example]] = {}
        for ex in examples:
            self.by_domain.setdefault(ex.domain, []).append(ex)
        self.seed = seed

    @property
    def domains(self) -> list[str]:
        return sorted(self.by_domain)

    def draw(self, step: int, ratios: dict[str, float], batch_size: int) -> list[Example]:
        """The prompts of ``step``: per-domain counts from ``ratios``, sampled without replacement."""
        missing = [d for d, r in ratios.items() if r > 0 and d not in self.by_domain]
        if missing:
            raise DataError(f"no training prompts for domain(s) {missing}; domains in the data: {self.domains}")
        rng = random.Random(f"{self.seed}:{step}")
        out: list[Example] = []
        for domain, k in allocate(batch_size, ratios).items():
            pool = self.by_domain.get(domain, [])
            out += rng.sample(pool, k) if k <= len(pool) else [rng.choice(pool) for _ in range(k)]
        return out

    def state_dict(self) -> dict[str, int]:
        return {"seed": self.seed}
