"""``DistillModule``: one training step of multi-teacher on-policy distillation.

The step reads like the algorithm: the strategy plans the prompt pool, the
student samples rollouts, each rollout is routed to its domain's teacher for
prefill, the strategy selects samples, and the student minimises per-token
reverse KL (or a configured alternative) on its own trajectories.
Teachers are plain attributes, not submodules: they stay frozen, out of the
optimiser and out of checkpoints.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from mopdx import losses
from mopdx.backends.base import RolloutBackend, Rollouts, ScoreRequest, TeacherOutput, TeacherScorer
from mopdx.backends.factory import rollout_sampling
from mopdx.backends.hf import HFRolloutBackend
from mopdx.data import Example, PromptPool, step_seed
from mopdx.distill.pipeline import StepTimes, sample_and_prefill
from mopdx.distill.rewards import verifier_rewards
from mopdx.envs.episodes import fill_rewards, run_episodes
from mopdx.envs.registry import environment_factory, episode_spec
from mopdx.distill.routing import group_by_domain, subset_teacher
from mopdx.distill.sharding import all_sum, global_denominator, global_select, shard_keys
from mopdx.errors import TrainingError
from mopdx.finite import sampling_guard
from mopdx.optim import configure_optimizers
from mopdx.strategy import Strategy
from mopdx.stops import cut_at_stops
from mopdx.student_loss import student_loss
from mopdx.text import encode_prompt
from mopdx.training_loop import Trained, TrainingLoop
from mopdx.verifiers.grading import UNGRADED

log = logging.getLogger("mopdx")


@dataclass
class StepSample:
    """One step's sampled and scored batch (this process's share of it)."""

    rollouts: Rollouts
    teacher: TeacherOutput
    plan: Any  # the strategy's StepPlan
    times: StepTimes
    examples: list[Example]  # the prompts, for the verifier rewards
    keys: list[int]  # their places in the global batch, for the global selection


class DistillModule(TrainingLoop):
    def __init__(
        self,
        cfg: DictConfig,
        student: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        teachers: Mapping[str, TeacherScorer],
        strategy: Strategy,
        prompts: PromptPool,
        rollout_backend: RolloutBackend | None = None,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.student = student
        self.tokenizer = tokenizer
        self.teachers = dict(teachers)
        self.strategy = strategy
        self.prompts = prompts
        self.rollout = rollout_backend or HFRolloutBackend(student, tokenizer.pad_token_id, tokenizer.eos_token_id)
        self.loss_spec = losses.LossSpec.from_cfg(cfg.loss)
        self._examples_have_answers = prompts is not None and all(e.answer for exs in prompts.by_domain.values() for e in exs)
        self.request: ScoreRequest = self.loss_spec.request()  # what the loss kind needs (losses.LOSSES)
        self._kl_reported: set[str] = set()
        self.sampled_tokens = 0  # completion tokens sampled so far (the budget compare states)
        self.make_env = environment_factory(cfg)  # None: no env.environments (evaluation by episode, callbacks.py)
        self.train_env = self.make_env if cfg.env.train else None  # None: single-turn training rollouts
        self.episode_spec = episode_spec(cfg)

    # ----------------------------------------------------------------- setup
    def on_fit_start(self) -> None:
        for scorer in self._scorers():
            model = getattr(scorer, "model", None)
            if isinstance(model, torch.nn.Module):
                model.to(self.device)

    def _scorers(self) -> list[TeacherScorer]:
        """Every teacher, a panel's members included."""
        return [t for s in self.teachers.values() for t in getattr(s, "teachers", [s])]

    def _panels(self) -> dict[str, Any]:
        """Domain -> its panel of several teachers (``mopdx.backends.panel``)."""
        return {d: s for d, s in self.teachers.items() if hasattr(s, "at_step")}

    def configure_optimizers(self) -> Any:
        return configure_optimizers(self.cfg, self.student.parameters(), self.strategy.schedule_blocks())

    # ------------------------------------------------------------------ step
    def sample_and_score(self, step: int) -> StepSample:
        """Plan the step's prompt pool, sample the student's rollouts and prefill them
        with their teachers (overlapped, chunk by chunk, with ``rollout.overlap_chunk``).
        Pure RL (``loss.teacher_weight=0``) asks no teacher; its teacher log-probs are zeros."""
        plan = self.strategy.plan(step)
        examples = self.prompts.draw(step, plan.domain_ratios, self.cfg.data.batch_size)
        rank, world = self._shard()
        keys = shard_keys(len(examples), rank, world)  # this process's share of the global batch
        examples = [examples[k] for k in keys]
        prompt_ids = [encode_prompt(self.tokenizer, e) for e in examples]
        domains = [e.domain for e in examples]
        sampling = rollout_sampling(self.cfg)

        def sample(lo: int, hi: int, chunk: int) -> Rollouts:
            with sampling_guard("the student", step):
                seed = step_seed(self.cfg.train.seed, step)
                # keyed: a prompt's rollouts depend on its place in the step's batch, not on the chunk it is sampled in
                s = sampling.with_seed(seed).with_keys(keys[lo:hi]) if sampling.keyed else sampling.with_seed(seed + chunk)
                if self.train_env is not None:  # multi-turn episodes (mopdx/envs/episodes.py)
                    out, _, stats = run_episodes(self.rollout, self.tokenizer, examples[lo:hi], self.train_env, s, self.episode_spec, keys[lo:hi])
                    self._episode_stats = stats
                else:
                    out = cut_at_stops(self.rollout.generate(prompt_ids[lo:hi], domains[lo:hi], s), self.tokenizer)
            return out.to(self.device)

        if not self.loss_spec.uses_teacher:
            t0 = time.perf_counter()
            rollouts = sample(0, len(examples), 0)
            teacher = TeacherOutput(logps=torch.zeros_like(rollouts.rollout_logps))
            times = StepTimes(sample_s=time.perf_counter() - t0, prefill_s=0.0, exposed_s=0.0)
        else:
            chunk = self.cfg.rollout.overlap_chunk
            rollouts, teacher, times = sample_and_prefill(sample, len(examples), chunk, self.teachers, self.request, self.tokenizer.pad_token_id)
        return StepSample(rollouts, teacher, plan, times, examples, keys)

    def student_loss(
        self, rollouts: Rollouts, teacher: TeacherOutput, rewards: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The configured loss (``losses.LOSSES[cfg.loss.kind]``, ``cfg.loss.average``) of the student on
        ``rollouts`` and its diagnostics, chunked over completion tokens (``cfg.loss.chunk_tokens``)."""
        batch = losses.LossBatch.of(rollouts, teacher, rewards)
        # several processes: each divides by the global denominator (x the process count) so
        # that Lightning's gradient average is the global batch's gradient
        denominator = global_denominator(rollouts.completion_mask, self.loss_spec.average)
        return student_loss(self.student, rollouts, batch, self.loss_spec, int(self.cfg.loss.chunk_tokens), denominator)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        step = self.global_step
        for panel in self._panels().values():
            panel.at_step(step)  # scheduled weights
        t0 = time.perf_counter()
        sample = self.sample_and_score(step)
        rollouts, teacher, plan, times = sample.rollouts, sample.teacher, sample.plan, sample.times
        t2 = time.perf_counter()
        keep = global_select(self.strategy, step, plan, rollouts, teacher, sample.keys, rollout_sampling(self.cfg).per_prompt).to(self.device)
        if keep.numel() == 0:
            raise TrainingError(f"strategy {self.strategy.name!r} selected no samples at step {step}")
        kept, kept_teacher = rollouts.subset(keep), subset_teacher(teacher, keep)
        if rollouts.episode_rewards is not None:  # the episode's reward; the verifier's for single-turn domains
            rewards = fill_rewards(rollouts.episode_rewards.to(self.device), lambda: verifier_rewards(self.tokenizer, rollouts, sample.examples))
        else:
            rewards = verifier_rewards(self.tokenizer, rollouts, sample.examples) if self._score_rewards else None
        loss, stats = self.student_loss(kept, kept_teacher, None if rewards is None else rewards[keep])
        stats.update({k: torch.tensor(v) for k, v in getattr(self, "_episode_stats", {}).items()})  # env/turns, env/failed, env/env_tokens
        if rewards is not None:
            stats["reward"] = rewards.mean()
            stats["reward_ungraded"] = torch.tensor(float(sum(UNGRADED.values())))  # samples whose verifier raised, so far
        self.check_loss(loss, step, "loss", f"in phase {plan.phase!r}: lower optim.lr or loss.adv_clip, or check the teacher folders, "
                        "and --resume from the last good checkpoint")
        t3 = time.perf_counter()
        self.sampled_tokens += int(all_sum(rollouts.completion_mask.sum()).item())
        self._log_step(step, plan.phase, rollouts, teacher, kept, loss, stats, (t0, times, t2, t3))
        return loss

    def _shard(self) -> tuple[int, int]:
        """(this process's rank, the number of processes); (0, 1) outside a distributed trainer."""
        trainer = self._trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    @property
    def _score_rewards(self) -> bool:
        """Rewards are computed when the loss needs them (RL) and, as a training-accuracy metric,
        whenever every prompt has a reference answer."""
        return self.loss_spec.uses_rewards or self._examples_have_answers

    # ------------------------------------------------------------ weight sync
    @property
    def _external_engine(self) -> bool:
        """An engine with weights of its own (vLLM), not a sampler over the trainer's module (hf, hf_cb)."""
        return not getattr(self.rollout, "reads_trainer_weights", False)

    def sync_rollout_weights(self) -> None:
        """Load the student's current weights into the rollout engine (vLLM)."""
        if self._external_engine:
            self.rollout.sync_weights(self.student.state_dict())
        self._unsynced_steps = 0

    def ensure_synced(self) -> None:
        """Before evaluating with the engine: sync if it lags the trainer."""
        if self._external_engine and getattr(self, "_unsynced_steps", 0):
            self.sync_rollout_weights()

    def on_train_start(self) -> None:
        super().on_train_start()
        if self._external_engine:  # the engine was built from the folder; a resume has other weights
            self.sync_rollout_weights()

    def trained(self) -> list[Trained]:
        return [Trained(self.student, "the student", "train/grad_norm")]

    def after_optimizer_step(self) -> None:
        """The weight sync every ``rollout.sync_every`` steps, so evals and checkpoints in
        callbacks see a synced engine.  With ``sync_every > 1`` rollouts come from stale
        weights; ``loss.is_clip`` turns on the truncated importance ratio that corrects for
        it (PG loss)."""
        self._unsynced_steps = getattr(self, "_unsynced_steps", 0) + 1
        if self._external_engine and self._unsynced_steps >= max(1, int(self.cfg.rollout.sync_every)):
            self.sync_rollout_weights()

    # --------------------------------------------------------------- logging
    def _log_step(
        self,
        step: int,
        phase: str,
        rollouts: Rollouts,
        teacher: TeacherOutput,
        kept: Rollouts,
        loss: torch.Tensor,
        stats: dict[str, torch.Tensor],
        times: tuple[float, StepTimes, float, float],
    ) -> None:
        t0, step_times, t2, t3 = times
        mask = rollouts.completion_mask
        clip = self.cfg.loss.adv_clip
        # Advantage A = lt - ls of the sampled tokens, for every loss form; -mean(A) is the
        # per-token reverse-KL estimate under the sampling policy.
        adv = teacher.logps - rollouts.rollout_logps
        adv_mean, adv_std, clip_frac = losses.advantage_stats(adv, mask, clip)
        metrics: dict[str, float] = {
            "train/adv_mean": adv_mean.item(),
            "train/adv_std": adv_std.item(),
            "train/clip_frac": clip_frac.item(),
            "train/loss": (all_sum(loss.detach()) / self._shard()[1]).item(),  # the global batch's loss
            "train/kept_frac": len(kept) / max(1, len(rollouts)),
            "train/completion_len": mask.sum(-1).float().mean().item(),
            "time/sample_s": step_times.sample_s,
            "time/prefill_s": step_times.prefill_s,
            "time/prefill_exposed_s": step_times.exposed_s,
            "time/prefill_hidden_frac": step_times.hidden_frac,
            "time/train_fwd_s": t3 - t2,
            "throughput/rollout_tok_s": mask.sum().item() / max(step_times.sample_s, 1e-9),
            "throughput/step_tok_s": mask.sum().item() / max(t3 - t0, 1e-9),
        }
        for k, v in stats.items():
            metrics[f"train/{k}"] = float(v)
        for domain, idx in group_by_domain(rollouts.domains).items():
            metrics[f"frac/{domain}"] = len(idx) / len(rollouts)
            if not self.loss_spec.uses_teacher:  # pure RL: no teacher log-probs, so no KL to report
                continue
            i = torch.tensor(idx, device=mask.device)
            d_mean, _, d_clip = losses.advantage_stats(adv[i], mask[i], clip)
            metrics[f"kl/{domain}"] = -d_mean.item()
            metrics[f"clip_frac/{domain}"] = d_clip.item()
        metrics.update({f"strategy/{k}": v for k, v in self.strategy.metrics().items()})
        for d, panel in self._panels().items():  # each teacher's KL from the student and the share of tokens it wins
            metrics.update({f"teacher/{d}/{k}": v for k, v in panel.metrics().items()})
        first_seen = {k[3:]: v for k, v in metrics.items() if k.startswith("kl/") and k[3:] not in self._kl_reported}
        if first_seen:  # each teacher's KL the first time its domain is sampled (not every strategy samples all at step 0)
            self._kl_reported.update(first_seen)
            self._warn_initial_kl(first_seen)
        self.log_dict(metrics, on_step=True, on_epoch=False, prog_bar=False, batch_size=len(rollouts))
        if self.loss_spec.uses_teacher:
            self.log("kl", sum(v for k, v in metrics.items() if k.startswith("kl/")) / max(1, sum(k.startswith("kl/") for k in metrics)), prog_bar=True, batch_size=len(rollouts))
        if "train/reward" in metrics:
            self.log("reward", metrics["train/reward"], prog_bar=True, batch_size=len(rollouts))

    def _warn_initial_kl(self, kls: dict[str, float]) -> None:
        limit = self.cfg.model.initial_kl_warn
        for domain, kl in kls.items():
            log.info("initial per-token KL to the %s teacher: %.4f", domain, kl)
            if kl > limit:
                log.warning(
                    "initial per-token KL to the %s teacher is %.3f (> model.initial_kl_warn=%.3f): far from the "
                    "same-origin regime (~0.04 in the MOPD paper; ~0.19 was already unstable there); expect slow or unstable MOPD",
                    domain, kl, limit,
                )

    # ----------------------------------------------------------- checkpoints
    def loop_state(self) -> dict[str, Any]:
        # the domains whose initial KL was reported: a resumed run must not call its step-N KL "initial"
        return {"sampled_tokens": self.sampled_tokens, "kl_reported": sorted(self._kl_reported)}

    def load_loop_state(self, state: dict[str, Any], checkpoint: dict[str, Any]) -> None:
        self.sampled_tokens = int(state.get("sampled_tokens", 0))
        self._kl_reported = set(state.get("kl_reported", ()))
