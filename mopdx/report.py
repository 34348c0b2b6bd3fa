"""Evaluating model folders for reports (``eval`` command, comparisons)."""

from __future__ import annotations

from collections.abc import Sequence

from mopdx.backends.hf import HFRolloutBackend
from mopdx.evaluate import EvalSettings, accuracy_by_domain
from mopdx.lab.domains import Example
from mopdx.models import load_model, load_tokenizer


def evaluate_folder(path: str, examples: Sequence[Example], settings: EvalSettings, greedy: bool = True) -> dict[str, float]:
    """Per-domain verifier accuracy of the model in folder ``path``."""
    tok = load_tokenizer(path)
    model = load_model(path)
    backend = HFRolloutBackend(model, tok.pad_token_id, tok.eos_token_id)
    return accuracy_by_domain(backend, tok, examples, settings, greedy=greedy)
