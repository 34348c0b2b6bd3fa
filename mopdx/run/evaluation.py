"""Verifier-based evaluation of a model on domain-labelled prompts.

Accuracy is measured by generating completions and checking each with the
domain's verifier (a plug-in's, else exact match).  The default is the
papers' sampled evaluation: avg@k, ``eval.samples`` completions per prompt at
``eval.temperature`` with no top-p / top-k, averaged; ``eval.greedy`` scores
one greedy completion instead.  Every model a run scores -- student,
teachers, baselines -- goes through ``accuracy_by_domain`` with the run's one
``EvalConfig``, so normalised scores never mix decodings.  Generation goes through a ``RolloutBackend`` so the same
code evaluates with transformers or vLLM.  Per-domain accuracy is a
``torchmetrics`` mean, so it reduces correctly across processes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torchmetrics import MeanMetric
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from mopdx.backends.base import RolloutBackend, Sampling
from mopdx.backends.hf import HFRolloutBackend
from mopdx.config import EvalConfig
from mopdx.data import Example
from mopdx.distill.rewards import verifier_rewards
from mopdx.envs.episodes import EpisodeSpec, fill_rewards, run_episodes
from mopdx.models import load_model, load_tokenizer
from mopdx.stops import cut_at_stops
from mopdx.text import encode_prompt
from mopdx.verifiers.grading import UNGRADED


class DomainAccuracy:
    """Running accuracy per domain (one ``torchmetrics.MeanMetric`` each, in float64 so that
    0.02 is stored as 0.02 in ``eval.jsonl``, not as float32's 0.0199999995)."""

    def __init__(self, domains: Sequence[str] = ()) -> None:
        # ``domains`` made up front: processes that reduce these metrics must hold the same
        # ones in the same order, even when a domain is missing from one's shard
        self.metrics: dict[str, MeanMetric] = {d: self._metric() for d in sorted(domains)}

    @staticmethod
    def _metric() -> MeanMetric:
        """A float64 mean on the device the process group reduces on: NCCL gathers only CUDA
        tensors (on one card under FSDP a CPU metric failed: "No backend type associated with
        device type cpu"), gloo CPU ones."""
        import torch.distributed as dist

        metric = MeanMetric().set_dtype(torch.float64)
        if dist.is_available() and dist.is_initialized() and dist.get_backend() == "nccl":
            metric = metric.to(torch.device("cuda", torch.cuda.current_device()))
        return metric

    def update(self, domain: str, correct: bool) -> None:
        if domain not in self.metrics:
            self.metrics[domain] = self._metric()
        self.metrics[domain].update(float(correct))

    def compute(self) -> dict[str, float]:
        return {d: float(self.metrics[d].compute()) for d in sorted(self.metrics)}


class Accuracies(dict):
    """Per-domain accuracy (a plain ``dict``), with how many samples no verifier could grade
    (they count as wrong: ``mopdx.verifiers.grading``)."""

    ungraded: int = 0


def eval_sampling(settings: EvalConfig) -> Sampling:
    """The one decoding of evaluation: avg@k sampling (``samples`` per prompt at ``temperature``,
    no top-p / top-k), or one greedy completion."""
    return Sampling(n=settings.samples, max_new_tokens=settings.max_new_tokens, temperature=settings.temperature, greedy=settings.greedy,
                    keyed=settings.sampler == "keyed")


def accuracy_by_domain(
    backend: RolloutBackend,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    settings: EvalConfig,
    progress: bool = False,
    keys: Sequence[int] | None = None,
    domains: Sequence[str] = (),
    episodes: tuple[Callable[[Example], object], EpisodeSpec] | None = None,
) -> Accuracies:
    """Mean verifier accuracy per domain over every completion of ``examples`` (avg@k, or greedy).

    Prompts go to the backend in chunks of ``settings.batch_size`` completions; a
    chunk's seed depends only on ``settings.seed`` and its position, so the same
    model gives the same figure every time it is evaluated.  With ``eval.sampler=keyed``
    each prompt's draws depend on its index in ``examples`` alone (not on
    ``batch_size``); ``keys`` gives those indices when ``examples`` is one shard of a
    larger set, and ``domains`` every domain of that set (the metrics are reduced across
    processes when several run).  ``episodes`` (an environment factory and the episode budgets,
    ``mopdx.envs.registry``): each completion is an episode, scored by its reward (a domain
    without an environment by its verifier), so an agentic domain is measured as it is trained."""
    accuracy = DomainAccuracy(domains)
    sampling = eval_sampling(settings)
    ungraded_before = sum(UNGRADED.values())
    per_chunk = max(1, settings.batch_size // sampling.per_prompt)
    chunks = range(0, len(examples), per_chunk)
    for start in tqdm(chunks, desc="eval", leave=False, **({} if progress else {"disable": True})):
        batch = examples[start : start + per_chunk]
        prompts = [encode_prompt(tokenizer, e) for e in batch]
        if sampling.keyed:
            chunk_sampling = sampling.with_seed(settings.seed).with_keys(keys[start : start + per_chunk] if keys is not None else range(start, start + len(batch)))
        else:
            chunk_sampling = sampling.with_seed(settings.seed + start)
        if episodes is not None:
            chunk_keys = list(chunk_sampling.keys) if chunk_sampling.keys is not None else None
            rollouts, env_rewards, _ = run_episodes(backend, tokenizer, batch, episodes[0], chunk_sampling, episodes[1], chunk_keys)  # type: ignore[arg-type]
            rewards = fill_rewards(env_rewards, lambda: verifier_rewards(tokenizer, rollouts, batch))
        else:
            rollouts = cut_at_stops(backend.generate(prompts, [e.domain for e in batch], chunk_sampling), tokenizer)
            rewards = verifier_rewards(tokenizer, rollouts, batch)
        for p, reward in zip(rollouts.prompt_index.tolist(), rewards.tolist()):
            accuracy.update(batch[p].domain, reward == 1.0)
    out = Accuracies(accuracy.compute())
    out.ungraded = sum(UNGRADED.values()) - ungraded_before
    return out


def evaluate_folder(path: str, examples: Sequence[Example], settings: EvalConfig, dtype: str = "float32") -> dict[str, float]:
    """Per-domain verifier accuracy of the model in folder ``path``."""
    tok = load_tokenizer(path)
    backend = HFRolloutBackend(load_model(path, dtype), tok.pad_token_id, tok.eos_token_id)
    return accuracy_by_domain(backend, tok, examples, settings)
