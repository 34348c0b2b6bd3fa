"""``TrainingLoop``: what every mopdx training loop shares, written once.

MOPD, RL, the cascade and co-distillation differ in how a step samples and
scores; they must not differ in how a step is *guarded*.  This base holds that
part: gradient clipping per trained model with a stop on a non-finite norm
before the optimiser applies it, the check that the weights are still finite
after the update (before anything samples from or checkpoints them), the hook
after each optimiser step (weight sync to a rollout engine, an EMA teacher),
the learning-rate refresh at the start of a resumed run, the one-line stop on a
non-finite loss, and the checkpoint state every loop saves (strategy, sampler,
config) -- so a fix to any of them reaches every method.

A loop names its trained models in ``trained()``, its own checkpoint fields in
``loop_state`` / ``load_loop_state``, and what runs after each optimiser step
in ``after_optimizer_step``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf

from mopdx.data import PromptPool
from mopdx.finite import HINT, NonFiniteError, check_grad_norm, check_weights, grad_norms
from mopdx.optim import refresh_lr
from mopdx.strategy import Strategy


@dataclass(frozen=True)
class Trained:
    """One model the loop trains: how errors name it (``who``) and where its gradient norm is logged."""

    module: torch.nn.Module
    who: str  # "the student", "peer 'A'"
    grad_norm_key: str  # "train/grad_norm", "A/grad_norm"


class TrainingLoop(pl.LightningModule):
    """Base of the distill and co-distillation modules (module docstring).  Subclasses set
    ``self.cfg``, ``self.strategy`` and ``self.prompts`` in ``__init__``."""

    cfg: DictConfig
    strategy: Strategy
    prompts: PromptPool

    def trained(self) -> list[Trained]:
        """The models this loop trains, each clipped and checked on its own."""
        raise NotImplementedError

    def after_optimizer_step(self) -> None:
        """Runs after every optimiser step, once the weights are known to be finite."""

    def loop_state(self) -> dict[str, Any]:
        """The loop's own fields of the checkpoint's ``mopdx`` entry."""
        return {}

    def load_loop_state(self, state: dict[str, Any], checkpoint: dict[str, Any]) -> None:
        """Restore ``loop_state``; ``checkpoint`` is the whole dict (for key migrations)."""

    # ------------------------------------------------------------------ guards
    def check_loss(self, loss: torch.Tensor, step: int, what: str = "loss", hint: str = HINT) -> None:
        """Stop on a non-finite loss with one line (``what`` names it, ``hint`` says what to change)."""
        if not torch.isfinite(loss):
            raise NonFiniteError(f"{what} is {loss.item()} at step {step}; non-finite state is never checkpointed -- {hint}", bad_step=step)

    def configure_gradient_clipping(self, optimizer: Any, gradient_clip_val: Any = None, gradient_clip_algorithm: Any = None) -> None:
        """Clip each trained model's gradient norm to ``optim.grad_clip`` on its own (a joint norm
        would couple co-distilling peers), and stop on a non-finite norm here, before the
        optimiser applies it: a NaN gradient would turn every weight NaN (``mopdx.finite``)."""
        models = self.trained()
        norms = grad_norms({t.who: t.module.parameters() for t in models}, self.cfg.optim.grad_clip)
        for t in models:
            self.log(t.grad_norm_key, norms[t.who], on_step=True, on_epoch=False)
            check_grad_norm(norms[t.who], f"gradient norm of {t.who}", self.global_step, self.trainer)

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        """The step, the finite-weights check, then ``after_optimizer_step`` -- here, not in
        ``on_train_batch_end``, which runs after the checkpoint callback: what it changes
        (a synced engine, an EMA teacher) must be in ``last.ckpt`` and seen by evals."""
        super().optimizer_step(*args, **kwargs)
        for t in self.trained():
            check_weights(t.module.named_parameters(), t.who, self.global_step)
        self.after_optimizer_step()

    def on_train_start(self) -> None:
        refresh_lr(self.trainer)  # a resumed run continues the schedule where it stopped

    # ------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["mopdx"] = {
            "strategy": self.strategy.state_dict(),
            "sampler": self.prompts.state_dict(),
            "config": OmegaConf.to_container(self.cfg, resolve=True),
            **self.loop_state(),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("mopdx", {})
        self.load_loop_state(state, checkpoint)
        self.strategy.load_state_dict(state.get("strategy", {}))
        if state.get("sampler"):
            self.prompts.seed = state["sampler"]["seed"]
