"""Domain-labelled prompt data and the per-step prompt sampler.

Prompts live in JSONL (``{"prompt": ..., "domain": ..., "answer": ...}``;
``answer`` is needed only for evaluation).  Each step's prompts are a pure
function of ``(seed, step, plan)``, so a resumed run draws exactly the
prompts the uninterrupted run would have drawn, with no sampler state to
lose.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytorch_lightning as pl
from torch.utils.data import DataLoader, IterableDataset

from mopdx.errors import DataError
from mopdx.lab.domains import Example


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
                rows.append(Example(domain=str(obj["domain"]), prompt=str(obj["prompt"]), answer=str(obj.get("answer", ""))))
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


class _StepIndices(IterableDataset):
    """Yields step numbers forever; the module turns a step into prompts itself."""

    def __iter__(self) -> Iterator[int]:
        i = 0
        while True:
            yield i
            i += 1


class StepDataModule(pl.LightningDataModule):
    """Lightning needs a dataloader; ours only paces the loop (prompts depend on the step)."""

    def train_dataloader(self) -> DataLoader:
        return DataLoader(_StepIndices(), batch_size=None, num_workers=0)
