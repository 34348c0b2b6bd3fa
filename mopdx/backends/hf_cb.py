"""Student rollouts through transformers' continuous batching (``rollout.backend=hf_cb``).

Why: where vLLM is absent (or does not support a model), ``generate`` spends most of a
GPU step in Python, one decode step per token for the whole padded batch.
transformers ships an engine of its own for this -- ``generate_batch``: a paged KV
cache, requests scheduled as they finish, CUDA graphs -- documented for GRPO-style
"many samples per prompt".  It reads the trained module's own weights (it switches the
module's attention to a paged implementation for the call and back), so weight sync is
a no-op, as with ``hf``: no stale copy can be sampled.

What it gives, against the other backends:

* ``rollout.n`` samples per prompt (``num_return_sequences``: forked requests that share
  the prompt's KV blocks), temperature / top-p / top-k, EOS, ``max_new_tokens``; stop
  strings are cut afterwards (``mopdx.stops``), as for every backend.
* The sampled tokens' log-probs under the sampling policy (after temperature / top-k /
  top-p), as the engine computes them (``return_logprobs``): the same quantity as ``hf``'s.
* Seeds: one seed per call (the engine seeds torch's global generator in its worker
  thread; mopdx saves and restores the caller's random state around it).  Per-rollout
  keyed seeds are not available (``rollout.sampler=keyed`` is refused with this backend).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

from mopdx.backends.base import Rollouts, Sampling, rollouts_from_lists
from mopdx.errors import ConfigError, TrainingError


@dataclass(frozen=True)
class CBSettings:
    """The engine's cache (``hf_cb.*`` in the config); 0 = sized here (CPU) or by transformers (CUDA)."""

    page_size: int = 0  # tokens per KV page: 0 = 16 on CPU, transformers' default (256) on CUDA
    num_blocks: int = 0  # KV blocks: 0 = enough for the whole call's requests on CPU, from free memory on CUDA
    max_batch_tokens: int = 0  # tokens per engine step: 0 = 512 on CPU, from free memory on CUDA
    cuda_graphs: bool = True  # capture CUDA graphs (CUDA only)


def cache_sizes(settings: CBSettings, cuda: bool, requests: int, max_len: int) -> dict[str, int | None]:
    """The cache arguments of one call.  On CPU transformers sizes the cache from GPU
    memory it cannot read (a 2-core test machine was OOM-killed), so it is sized here
    from the call's own workload: every request's longest possible sequence."""
    page = settings.page_size or (None if cuda else 16)
    blocks: int | None = settings.num_blocks or None
    tokens: int | None = settings.max_batch_tokens or None
    if not cuda:
        blocks = blocks or requests * math.ceil(max_len / page) + requests  # type: ignore[operator]
        tokens = tokens or 512
    return {"page_size": page, "num_blocks": blocks, "max_batch_tokens": tokens}  # type: ignore[dict-item]


class HFContinuousBatchingBackend:
    """Samples with ``model.generate_batch`` (continuous batching, paged attention)."""

    reads_trainer_weights = True  # samples the trained module itself: weight sync is a no-op

    def __init__(self, model: PreTrainedModel, pad_id: int, eos_id: int, settings: CBSettings = CBSettings()) -> None:
        self.model, self.pad_id, self.eos_id, self.settings = model, pad_id, eos_id, settings

    @torch.no_grad()
    def generate(self, prompt_ids: list[list[int]], domains: list[str], sampling: Sampling) -> Rollouts:
        from transformers import GenerationConfig
        from transformers.generation.configuration_utils import ContinuousBatchingConfig

        s = sampling
        if s.keyed and not s.greedy:
            raise ConfigError("rollout.backend=hf_cb draws with one seed per call, not per rollout: set rollout.sampler=generate "
                              "and eval.sampler=generate, or use rollout.backend=hf or vllm for keyed sampling")
        device = next(self.model.parameters()).device
        cuda = device.type == "cuda"
        n = s.per_prompt
        sample = {} if s.greedy else {"temperature": s.temperature, "top_p": s.top_p, "top_k": s.top_k or None}
        gen = GenerationConfig(max_new_tokens=s.max_new_tokens, num_return_sequences=n, do_sample=not s.greedy, eos_token_id=self.eos_id,
                               pad_token_id=self.pad_id, **sample)
        sizes = cache_sizes(self.settings, cuda, len(prompt_ids) * n, max(map(len, prompt_ids)) + s.max_new_tokens)
        cb = ContinuousBatchingConfig(return_logprobs=True, seed=s.seed, use_cuda_graph=self.settings.cuda_graphs if cuda else False,
                                      **{k: v for k, v in sizes.items() if v is not None})
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.random.fork_rng(devices=[device] if cuda else []):  # the engine seeds the global generator
                out = self.model.generate_batch([list(p) for p in prompt_ids], generation_config=gen, continuous_batching_config=cb,
                                                warmup=cuda and self.settings.cuda_graphs, progress_bar=False)
        finally:
            self.model.train(was_training)
        results = list(out.values())
        failed = [r for r in results if r.error is not None]
        if len(results) != len(prompt_ids) * n or failed:
            why = failed[0].error if failed else f"{len(results)} of {len(prompt_ids) * n} requests came back"
            raise TrainingError(f"continuous batching failed ({why}); rerun with rollout.backend=hf, or size its cache (hf_cb.num_blocks)")
        completions, logps, index = [], [], []
        for j, r in enumerate(results):  # in input order, each prompt's samples together (generate_batch's order)
            i = j // n
            assert list(r.prompt_ids) == list(prompt_ids[i]), "continuous batching returned its requests out of order"
            tokens = list(r.generated_tokens)
            if self.eos_id in tokens:
                tokens = tokens[: tokens.index(self.eos_id) + 1]
            completions.append(tokens)
            logps.append(list(r.logprobs)[: len(tokens)])
            index.append(i)
        return rollouts_from_lists(prompt_ids, completions, logps, index, domains, self.pad_id).to(device)

    def sync_weights(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Nothing to do: the engine samples from the trainer's own module."""
