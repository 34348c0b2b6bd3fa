"""One run assembly for every loop: resolve inputs, check them, then make the run folder.

Distillation (``run.fit``), co-distillation (``run.codistill``) and the
baselines (``experiments.baselines``) all start the same way, in the order a
user needs: references are resolved (a plug-in such as the lab may build
them: ``mopdx.plugins``), data is loaded, model folders and tokenizers are
checked -- and only then is the run folder created and the resolved config
written, so ``fit --config <run>/config.yaml`` reproduces the run and a bad
input leaves nothing behind.  The folder itself (locking, cleanup,
resume records) is ``run.folder``'s business.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from mopdx.config import to_yaml
from mopdx import verifiers
from mopdx.data import Example, take_per_domain
from mopdx.data_sources import load_examples
from mopdx.errors import ConfigError, DataError
from mopdx.teacher_config import teacher_roles
from mopdx.models import check_model_folder, check_model_vocab, check_same_vocab, load_model, load_tokenizer
from mopdx.plugins import is_remote, resolve_ref
from mopdx.run import ranks
from mopdx.run.folder import lock_run_dir, new_run_dir, record_resume, release_run_dir
from mopdx.text import configure_format, encode_prompt
from mopdx.verifiers.table import check_gradable

log = logging.getLogger("mopdx")


@dataclass
class RunInputs:
    """What a loop needs before it loads weights: data, checked model folders, one tokenizer."""

    cfg: DictConfig
    train: list[Example]
    domains: list[str]
    evals: list[Example]
    models: dict[str, str]  # role ("student", "teacher add", "peer A") -> local folder or server URL
    tokenizer: PreTrainedTokenizerBase
    run_dir: Path | None = None

    def open_run_dir(self, resume: Path | None = None, run_dir: Path | None = None) -> Path:
        """Create (or reuse, on resume) the run folder, lock it for this process, and write
        the resolved config (a resume records its changes in ``resume-<time>.yaml`` instead).

        Call ``close_run_dir`` when the run ends, failed or not (``try``/``finally``).  In a
        multi-process run only the main process creates, locks and writes it (``run.ranks``)."""
        if ranks.is_helper(self.cfg):
            self.run_dir = ranks.shared_run_dir(self.cfg, resume)
            self.run_dir.mkdir(parents=True, exist_ok=True)
            return self.run_dir
        run_dir = run_dir or (None if resume is not None else ranks.main_run_dir(self.cfg))
        if resume is not None or run_dir is not None:
            self.run_dir = resume or run_dir
            assert self.run_dir is not None
            created = not self.run_dir.exists()
            self.run_dir.mkdir(parents=True, exist_ok=True)
        else:
            self.run_dir, created = new_run_dir(self.cfg), True
        lock_run_dir(self.run_dir, created)
        if resume is not None and (resume / "config.yaml").is_file():
            record_resume(resume, self.cfg)
        else:
            (self.run_dir / "config.yaml").write_text(to_yaml(self.cfg))
        ranks.announce_run_dir(self.cfg, self.run_dir)
        return self.run_dir

    @contextmanager
    def run_folder(self, resume: Path | None = None, run_dir: Path | None = None) -> Iterator[Path]:
        """``open_run_dir`` ... ``close_run_dir`` around a loop: the folder is locked while the
        run trains and removed if the run fails before doing any work."""
        path = self.open_run_dir(resume, run_dir)
        try:
            yield path
        finally:
            self.close_run_dir()

    def close_run_dir(self) -> None:
        """Unlock the run folder; remove it if the run did no work (it failed before its first
        checkpoint), so a failure leaves no folder holding only config.yaml. Safe after success."""
        if self.run_dir is not None and not ranks.is_helper(self.cfg):
            release_run_dir(self.run_dir)

    def load(self, role: str) -> PreTrainedModel:
        """Load the model of ``role`` and check that it covers the tokenizer."""
        model = load_model(self.models[role], self.cfg.model.dtype, what=role)
        check_model_vocab(model, self.tokenizer, role)
        return model


def read_examples(cfg: DictConfig, key: str, progress: bool, value: Any = None) -> list[Example]:
    """The examples ``data.train`` / ``data.eval`` (or ``value``) names: plug-in references
    resolved (a lab may build), files read through ``mopdx.data_sources``."""
    value = cfg.data[key.split(".")[1]] if value is None else value
    if isinstance(value, (ListConfig, DictConfig)):
        value = OmegaConf.to_container(value, resolve=True)
    return load_examples(value, cfg.data, key, lambda ref: resolve_ref(ref, cfg, progress))


def install_run_format(cfg: DictConfig) -> None:
    """This process's verifier table and prompt format, from the config (``mopdx.verifiers``, ``mopdx.text``):
    every loop that grades or encodes then agrees with evaluation."""
    verifiers.configure(OmegaConf.to_container(cfg.data.verifiers, resolve=True))  # type: ignore[arg-type]
    configure_format(OmegaConf.to_container(cfg.data.chat_template_kwargs, resolve=True), list(cfg.data.stop))  # type: ignore[arg-type]


def load_data(cfg: DictConfig, progress: bool, eval_domains_from_train: bool = False) -> tuple[list[Example], list[str], list[Example]]:
    """Training prompts, their domains, and up to ``data.eval_per_domain`` eval prompts per domain;
    every reference answer checked by its domain's verifier (a code task without tests fails here)."""
    install_run_format(cfg)
    train = read_examples(cfg, "data.train", progress)
    domains = sorted({e.domain for e in train})
    evals = read_examples(cfg, "data.eval", progress)
    if eval_domains_from_train:
        evals = [e for e in evals if e.domain in domains]
    evals = take_per_domain(evals, cfg.data.eval_per_domain)
    if not evals:
        raise DataError(f"data.eval has no prompts for the training domains {domains}")
    check_gradable([e for e in train if e.answer], "data.train")
    check_gradable(evals, "data.eval")
    return train, domains, evals


def prompt_limit(cfg: DictConfig, student_folder: str | None) -> int:
    """``data.max_prompt_tokens``, or (0) the student's context length minus the longer of rollout / eval completions."""
    if cfg.data.max_prompt_tokens:
        return int(cfg.data.max_prompt_tokens)
    if student_folder is None:
        return 0
    try:
        config = json.loads((Path(student_folder) / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return 0
    context = int(config.get("max_position_embeddings") or 0)
    return max(0, context - max(int(cfg.rollout.max_new_tokens), int(cfg.eval.max_new_tokens))) if context else 0


def limit_prompts(cfg: DictConfig, tokenizer: PreTrainedTokenizerBase, examples: list[Example], key: str, limit: int) -> list[Example]:
    """``examples`` whose encoded prompt fits ``limit`` tokens; longer ones dropped with a count, or
    (``data.long_prompts=refuse``) the run refused, before any model loads."""
    if limit <= 0:
        return examples
    lengths = [len(encode_prompt(tokenizer, e)) for e in examples]
    long = [n for n in lengths if n > limit]
    if not long:
        return examples
    what = f"{key}: {len(long)} of {len(examples)} prompts are longer than {limit} tokens (longest {max(long)})"
    if cfg.data.long_prompts == "refuse":
        raise DataError(f"{what}: shorten them, raise data.max_prompt_tokens, or set data.long_prompts=drop")
    kept = [e for e, n in zip(examples, lengths) if n <= limit]
    if not kept:
        raise DataError(f"{what}: none is left; raise data.max_prompt_tokens")
    log.warning("%s: dropped (data.long_prompts=drop)", what)
    return kept


def check_domains(cfg: DictConfig, domains: list[str], need_teachers: bool = True) -> None:
    """Every training domain has a teacher; ratios and eval groups name real domains."""
    if need_teachers:
        no_teacher = [d for d in domains if d not in cfg.model.teachers]
        if no_teacher:
            raise ConfigError(f"domain(s) {no_teacher} in the training data have no teacher: set model.teachers.<domain>=<model folder>")
    # a zero share trains nothing, and is how a merged config switches a domain off (YAML merges keep keys)
    unknown = [d for d, r in cfg.data.domain_ratios.items() if d not in domains and float(r) > 0]
    if unknown:
        raise DataError(f"data.domain_ratios names domain(s) {unknown} that have no training prompts; domains: {domains}")
    bad_groups = {g: [d for d in ds if d not in domains] for g, ds in cfg.eval.groups.items()}
    bad_groups = {g: ds for g, ds in bad_groups.items() if ds}
    if bad_groups:
        raise ConfigError(f"eval.groups names domain(s) with no training prompts: {bad_groups}; domains: {domains}")


def prepare(
    cfg: DictConfig, progress: bool, refs_for: Callable[[DictConfig, list[str]], dict[str, str]], need_teachers: bool = True,
    eval_domains_from_train: bool = False,
) -> RunInputs:
    """Resolve and check everything a run reads; ``refs_for(cfg, domains)`` maps each role to a
    model reference.

    The first local folder's tokenizer is the run's; every other local folder must share
    its vocabulary (a remote teacher proves its tokenizer when it connects)."""
    train, domains, evals = load_data(cfg, progress, eval_domains_from_train)
    check_domains(cfg, domains, need_teachers)
    refs = refs_for(cfg, domains)
    models: dict[str, str] = {}
    for role, ref in refs.items():
        models[role] = str(ref) if is_remote(ref) else str(check_model_folder(resolve_ref(str(ref), cfg, progress), role))
    local = [(role, path) for role, path in models.items() if not is_remote(path)]
    tokenizer = load_tokenizer(local[0][1])
    for role, path in local[1:]:
        if cfg.model.cross_tokenizer and role.startswith("teacher "):
            continue  # re-tokenised for that teacher (mopdx.backends.cross_tokenizer)
        check_same_vocab(tokenizer, load_tokenizer(path), role)
    limit = prompt_limit(cfg, local[0][1])
    train = limit_prompts(cfg, tokenizer, train, "data.train", limit)
    evals = limit_prompts(cfg, tokenizer, evals, "data.eval", limit)
    return RunInputs(cfg, train, sorted({e.domain for e in train}), evals, models, tokenizer)


def distill_refs(cfg: DictConfig, domains: list[str]) -> dict[str, str]:
    """The student and the teachers of the domains that occur in the data (only those are loaded;
    a pure-RL run may have none)."""
    return {"student": cfg.model.student, **{role: ref for d in domains if d in cfg.model.teachers for role, ref in teacher_roles(cfg, d).items()}}


def write_summary(run_dir: Path, summary: dict[str, Any], title: str, table: str) -> dict[str, Any]:
    """``summary.json`` and ``report.md`` (``# title`` + ``table``); returns the summary with its ``table``."""
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    (run_dir / "report.md").write_text(f"# {title}\n\n{table}\n")
    return {**summary, "table": table}


def save_final(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out: Path) -> None:
    """The trained model as a Hugging Face folder."""
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
