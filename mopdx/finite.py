"""Non-finite values in training: caught where they first appear, reported in one line.

Why a guard at each stage: a diverging run first shows a NaN/inf in the loss, then in
the gradient norm, then -- once the optimiser applies it -- in every weight, and the
next step dies in ``torch.multinomial`` with a traceback while the checkpoint callback
overwrites the last good state with NaNs.  Both loops (distillation, co-distillation)
check the loss, the gradient norm before the optimiser applies it and the weights after
it; the checkpoint writer (``run.trainer``) refuses non-finite state.  One error type,
``NonFiniteError``, lets the exception checkpoint tell divergence from a crash.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch

from mopdx.errors import TrainingError

HINT = "lower optim.lr (or raise optim.warmup_steps) and continue from the last good checkpoint: fit --resume RUN_DIR optim.lr=..."


class NonFiniteError(TrainingError):
    """A loss, gradient norm, logit or weight became NaN or inf.

    ``bad_step``: the step whose *starting* weights produced the value -- a checkpoint of
    that step holds them, and resuming from it with a lower lr would fail the same way
    (the lr does not change that step's forward/backward), so it is set aside.  None when
    the step's weights were fine and the optimiser update itself overflowed.
    """

    def __init__(self, message: str, bad_step: int | None) -> None:
        super().__init__(message)
        self.bad_step = bad_step


def first_nonfinite(named: Iterable[tuple[str, Any]]) -> str | None:
    """Name of the first floating tensor holding a NaN/inf, else None (one host sync in all)."""
    items = [(n, t) for n, t in named if isinstance(t, torch.Tensor) and t.is_floating_point()]
    if not items:
        return None
    dev = items[0][1].device
    ok = torch.stack([torch.isfinite(t).all().to(dev) for _, t in items])
    if bool(ok.all()):
        return None
    return items[int((~ok).nonzero()[0])][0]


def checkpoint_tensors(checkpoint: Mapping[str, Any]) -> Iterator[tuple[str, Any]]:
    """The weights and optimiser moments of a Lightning checkpoint, with printable names."""
    yield from checkpoint.get("state_dict", {}).items()
    for opt in checkpoint.get("optimizer_states", []):
        for idx, state in opt.get("state", {}).items():
            for key, value in state.items():
                yield f"optimizer state {key} of parameter {idx}", value


def grad_norms(groups: Mapping[str, Iterable[torch.nn.Parameter]], max_norm: float | None) -> dict[str, torch.Tensor]:
    """Each group's gradient norm before clipping; clips each group to ``max_norm`` when set
    (the norm comes from the clipping itself, so checking it costs nothing extra)."""
    out = {}
    for name, params in groups.items():
        with_grad = [p for p in params if p.grad is not None]
        if max_norm:
            out[name] = torch.nn.utils.clip_grad_norm_(with_grad, max_norm)
        else:
            out[name] = torch.nn.utils.get_total_norm([p.grad for p in with_grad])
    return out


def check_grad_norm(norm: torch.Tensor, what: str, step: int, trainer: Any) -> None:
    """Stop before the optimiser applies a non-finite gradient (the weights stay finite).

    Under a float16 ``GradScaler`` an inf gradient is routine -- the scaler skips that
    step and lowers its scale -- so nothing is raised there."""
    if torch.isfinite(norm) or getattr(trainer.precision_plugin, "scaler", None) is not None:
        return
    raise NonFiniteError(f"{what} is {norm.item()} at step {step} (not applied: the weights are still finite); {HINT}", bad_step=step)


def check_weights(named: Iterable[tuple[str, Any]], who: str, step: int) -> None:
    """After an optimiser step: finite gradients can still give non-finite weights (an lr so large the update overflows)."""
    bad = first_nonfinite(named)
    if bad is not None:
        raise NonFiniteError(f"{who} weight {bad} became non-finite in the optimiser update of step {step}; {HINT}", bad_step=None)


@contextmanager
def sampling_guard(who: str, step: int) -> Iterator[None]:
    """Turn ``torch.multinomial``'s traceback on non-finite probabilities into one line
    (finite weights whose activations overflow, e.g. in half precision)."""
    try:
        yield
    except RuntimeError as exc:
        if "probability tensor contains" not in str(exc):
            raise
        raise NonFiniteError(f"{who}'s next-token probabilities are non-finite when sampling at step {step}; {HINT}", bad_step=step) from exc
