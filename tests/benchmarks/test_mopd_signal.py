"""The measurements behind benchmarks/mopd_signal.py (issue 15's "why"): first error and logit-gradient norm."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

_spec = importlib.util.spec_from_file_location("mopd_signal", Path(__file__).parents[2] / "benchmarks" / "mopd_signal.py")
signal = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(signal)


@pytest.mark.parametrize(
    "completion, reference, expected",
    [
        ([1, 2, 3, 9], [1, 2, 3, 9], None),  # the reference itself
        ([1, 5, 3, 9], [1, 2, 3, 9], 1),  # a wrong token
        ([1, 2, 9], [1, 2, 3, 9], 2),  # stopped early: the EOS is the error
        ([1, 2, 3, 9, 4], [1, 2, 3, 9], 4),  # ran on past the reference
        ([1, 2, 3], [1, 2, 3, 9], 3),  # cut at the token limit, no EOS
    ],
)
def test_first_error(completion: list[int], reference: list[int], expected: int | None) -> None:
    assert signal.first_error(completion, reference) == expected


def test_logit_grad_norm_matches_autograd() -> None:
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 11, requires_grad=True)
    tokens = torch.randint(0, 11, (3, 5))
    logp_full = torch.log_softmax(logits, -1)
    logp_tok = logp_full.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    norms = signal.logit_grad_norm(logp_full.detach(), logp_tok.detach())
    for b, t in [(0, 0), (1, 3), (2, 4)]:
        (grad,) = torch.autograd.grad(logp_tok[b, t], logits, retain_graph=True)
        assert norms[b, t] == pytest.approx(float(grad[b, t].norm()), abs=1e-5)


def test_logit_grad_norm_vanishes_on_a_sure_token() -> None:
    """Why uniform credit is cheap in the lab: a token the student is sure of takes almost no gradient."""
    logits = torch.tensor([[20.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    logp_full = torch.log_softmax(logits, -1)
    norms = signal.logit_grad_norm(logp_full, logp_full[:, 0])
    assert norms[0] < 1e-7 < 0.5 < norms[1]
