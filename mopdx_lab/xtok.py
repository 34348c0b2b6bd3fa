"""The lab's teachers with another tokenizer: each domain teacher's behaviour, on a second BPE.

Why: cross-tokenizer MOPD (``model.cross_tokenizer``, ``mopdx.backends.cross_tokenizer``)
can only be judged against same-tokenizer MOPD from a teacher that behaves the same, so that
what differs between the two runs is the tokenizer and not the teacher.  Each teacher here is
made from the lab's teacher of its domain (``teacher/<d>``, the *source*):

1. **The second tokenizer** (``mopdx_lab.tokenizer.build_tokenizer(second=True)``): a BPE
   trained on the same text, which keeps a space with the digit after it -- ``Ġ7 5 3 7`` where
   the student has ``Ġ 7 5 3 7``, one teacher token over two student tokens at every block.
2. **The same weights**: the source's transformer body, copied; each token of the second
   vocabulary takes the input embedding of the last source token it spells and the output
   row of the first.  Copied as it is, this model samples the source's token sequences (the
   second vocabulary holds every source token) but scores the second tokenizer's own
   spellings badly: the teacher must be fine-tuned to them.
3. **The same behaviour**: SFT on the source's own T = 1 samples -- all of them, wrong ones
   too: sequence-level distillation of its distribution, not of the verifier -- written in the
   second tokenizer, until the new teacher's sampled accuracy on the check prompts is within
   ``lab.xtok.tolerance`` of the source's (measured every ``lab.xtok.check_every`` steps;
   ``lab.xtok.steps`` is a ceiling, and a teacher that misses stops the build with one line).

The manifest records what makes the comparison fair or not: both teachers' accuracy on the
eval prompts, the student's initial per-token KL to each (the same estimator: the student's
sequence log-prob less the teacher's, per student token, on the student's own samples), and
the new teacher's KL from its source on the source's samples (``behaviour_kl``).

Artifacts (``lab:xtok/teacher_<d>``) live under ``<lab>/xtok-<hash of lab.xtok>``.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from mopdx.backends.base import Rollouts, Sampling, ScoreRequest
from mopdx.backends.cross_tokenizer import CrossTokenizerScorer
from mopdx.backends.hf import HFRolloutBackend, HFTeacherScorer
from mopdx.data import Example, load_prompts
from mopdx.models import load_model, load_tokenizer
from mopdx.run.evaluation import evaluate_folder
from mopdx.sft import SFTLoop, SFTSpec
from mopdx.text import encode_prompt
from mopdx_lab.artifacts import atomic_dir, commit_dir, save_model_folder, settings_digest
from mopdx_lab.model_factory import build_tiny_qwen2
from mopdx_lab.samples import own_samples
from mopdx_lab.targets import Check, check_prompts
from mopdx_lab.tokenizer import build_tokenizer, save_tokenizer


def xtok_dir(lab: DictConfig, root: Path) -> Path:
    return root / f"xtok-{settings_digest(lab.xtok, length=8)}"


def build_xtok(lab: DictConfig, root: Path, progress: bool = True) -> Path:
    """Build (or finish) the second tokenizer and one teacher per lab domain inside the lab folder ``root``."""
    from mopdx_lab.build import build_scenario

    out = xtok_dir(lab, root)
    return build_scenario(lab, out, lambda: _build(lab, root, out, progress))


def _build(lab: DictConfig, root: Path, out: Path, progress: bool) -> None:
    from mopdx_lab.build import lab_eval

    out.mkdir(parents=True, exist_ok=True)
    tok_dir = out / "tokenizer"
    if not tok_dir.is_dir():
        corpus = [f"{e.prompt} {e.answer}" for e in load_prompts(root / "data" / "train.jsonl")]
        tmp = atomic_dir(tok_dir)
        save_tokenizer(build_tokenizer(corpus, int(lab.xtok.vocab_size), second=True), tmp)
        commit_dir(tmp, tok_dir)
    evals = load_prompts(root / "data" / "eval.jsonl")
    manifest: dict[str, Any] = {"teachers": {}, "missed": []}
    for d in lab.domains:
        folder = out / f"teacher_{d}"
        if not folder.is_dir():
            _distil(lab, root, d, tok_dir, folder, progress)
        info = json.loads((folder / "lab_info.json").read_text())
        if line := info["targets"]["missed"]:
            manifest["missed"].append(line)
        source = root / "models" / "teacher" / d
        mine = [e for e in evals if e.domain == d]
        manifest["teachers"][d] = {
            "source": f"teacher/{d}", "steps": info["steps"],
            "accuracy": {"source": evaluate_folder(str(source), mine, lab_eval(lab))[d], "xtok": evaluate_folder(str(folder), mine, lab_eval(lab))[d]},
            "initial_kl": initial_kls(lab, root, source, folder, mine[:256]),
            "behaviour_kl": info["behaviour_kl"],
        }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))


def transplant(source: PreTrainedModel, source_tok: PreTrainedTokenizerBase, tok: PreTrainedTokenizerBase, lab: DictConfig) -> PreTrainedModel:
    """A model over ``tok``'s vocabulary with ``source``'s body; each new token's input embedding is the
    source's of the last source token it spells, its output row the source's of the first."""
    from mopdx_lab.build import _spec

    model = build_tiny_qwen2(_spec(lab), tok, seed=int(lab.seed))
    theirs, mine = source.state_dict(), model.state_dict()
    src_vocab = source_tok.get_vocab()
    with torch.no_grad():
        for key, value in theirs.items():
            if key not in ("model.embed_tokens.weight", "lm_head.weight"):
                mine[key].copy_(value)
        for token, i in tok.get_vocab().items():
            pieces = [token] if token in src_vocab else source_tok.tokenize(tok.convert_tokens_to_string([token]))
            if pieces:
                mine["model.embed_tokens.weight"][i] = theirs["model.embed_tokens.weight"][src_vocab[pieces[-1]]]
                mine["lm_head.weight"][i] = theirs["lm_head.weight"][src_vocab[pieces[0]]]
    model.load_state_dict(mine)
    return model


def _distil(lab: DictConfig, root: Path, domain: str, tok_dir: Path, out: Path, progress: bool) -> None:
    x = lab.xtok
    source_dir = root / "models" / "teacher" / domain
    source, source_tok = load_model(source_dir), load_tokenizer(source_dir)
    tok = load_tokenizer_folder(tok_dir)
    check = Check.of(lab, [e for e in check_prompts(root) if e.domain == domain])
    target = check.accuracy(source, source_tok)[domain] - float(x.tolerance)
    prompts = [e for e in load_prompts(root / "data" / "train.jsonl") if e.domain == domain]
    data = own_samples(source, source_tok, random.Random(int(lab.seed)).sample(prompts, min(int(x.prompts), len(prompts))),
                       int(x.group), int(lab.max_new_tokens), seed=int(lab.seed) + 11)
    model = transplant(source, source_tok, tok, lab)
    loop = SFTLoop(model, tok, SFTSpec(steps=int(x.steps), batch_size=int(lab.batch_size), lr=float(x.lr), warmup=10, seed=int(lab.seed) + 11))
    history: list[dict[str, Any]] = []
    bar = tqdm(total=int(x.steps), desc=f"xtok teacher_{domain} (to sampled accuracy >= {target:.3f})", leave=False, dynamic_ncols=True, disable=not progress)
    acc = 0.0
    while len(loop.losses) < int(x.steps):
        for _ in range(min(int(x.check_every), int(x.steps) - len(loop.losses))):
            loop.step(data)
            bar.update()
        acc = check.accuracy(model, tok)[domain]
        history.append({"step": len(loop.losses), "loss": round(sum(loop.losses[-20:]) / len(loop.losses[-20:]), 4), "sampled": acc})
        bar.set_postfix_str(f"sampled {acc:.3f}")
        if acc >= target:
            break
    bar.close()
    line = None if acc >= target else (
        f"xtok/teacher_{domain} after lab.xtok.steps={x.steps} SFT steps: sampled accuracy {acc:.3f} < {target:.3f} (its source's less "
        f"lab.xtok.tolerance={x.tolerance:g}) on the check prompts; raise lab.xtok.steps or change lab.xtok.lr={x.lr:g}")
    behaviour = behaviour_kl(source, source_tok, model, tok, data[: 4 * 64])
    info = {"scenario": "xtok", "source": f"teacher/{domain}", "init": "the source's weights, its vocabulary mapped",
            "method": "SFT on the source's T = 1 samples in the second tokenizer", "samples": len(data), "steps": len(loop.losses),
            "checks": history, "behaviour_kl": round(behaviour, 4), "targets": {"target": round(target, 4), "missed": line}}
    save_model_folder(model, tok, out, info)


def load_tokenizer_folder(folder: Path) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


@torch.no_grad()
def behaviour_kl(source: PreTrainedModel, source_tok: PreTrainedTokenizerBase, model: PreTrainedModel, tok: PreTrainedTokenizerBase,
                 samples: list[Example]) -> float:
    """KL(source || new teacher) per source token on the source's own samples: the difference of the two
    sequence log-probs of the same text (each under its own tokenizer), per source token."""
    total, tokens = 0.0, 0
    for start in range(0, len(samples), 64):
        batch = samples[start : start + 64]
        lp_s, n_s = _sequence_logps(source, source_tok, batch)
        lp_x, _ = _sequence_logps(model, tok, batch)
        total += float((lp_s - lp_x).sum())
        tokens += n_s
    return total / max(1, tokens)


def _sequence_logps(model: PreTrainedModel, tok: PreTrainedTokenizerBase, batch: list[Example]) -> tuple[torch.Tensor, int]:
    """Each example's completion log-prob (its answer and EOS) under ``model``, and the completion tokens in all."""
    from mopdx.text import encode_completion

    was = model.training
    model.eval()
    try:
        rows = [(encode_prompt(tok, e), encode_completion(tok, e.answer)) for e in batch]
        width = max(len(p) + len(c) for p, c in rows)
        ids = torch.full((len(rows), width), tok.pad_token_id)
        mask = torch.zeros_like(ids)
        target = torch.zeros_like(ids, dtype=torch.bool)
        for i, (p, c) in enumerate(rows):
            ids[i, : len(p) + len(c)] = torch.tensor(p + c)
            mask[i, : len(p) + len(c)] = 1
            target[i, len(p) : len(p) + len(c)] = True
        logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits[:, :-1].float(), -1)
        picked = logp.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1) * target[:, 1:]
        return picked.sum(1), int(target.sum())
    finally:
        model.train(was)


@torch.no_grad()
def initial_kls(lab: DictConfig, root: Path, source: Path, xtok: Path, prompts: list[Example]) -> dict[str, float]:
    """The student's per-token KL to the source (same tokenizer) and to the new teacher (through the
    cross-tokenizer alignment), on the same student samples: what each run's first step reads."""
    student_dir = root / "models" / "stage1"
    student, tok = load_model(student_dir), load_tokenizer(student_dir)
    rollouts = HFRolloutBackend(student, tok.pad_token_id, tok.eos_token_id).generate(
        [encode_prompt(tok, e) for e in prompts], [e.domain for e in prompts], Sampling(max_new_tokens=int(lab.max_new_tokens), seed=int(lab.seed)))
    request = ScoreRequest()
    ls = HFTeacherScorer(student).score(rollouts, request).logps
    same = HFTeacherScorer(load_model(source)).score(rollouts, request).logps
    cross = CrossTokenizerScorer(load_model(xtok), load_tokenizer(xtok), tok).score(_with_logps(rollouts, ls), request).logps
    n = rollouts.completion_mask.sum().clamp(min=1.0)
    mask = rollouts.completion_mask
    return {"same": round(float(((ls - same) * mask).sum() / n), 4), "cross": round(float(((ls - cross) * mask).sum() / n), 4)}


def _with_logps(rollouts: Rollouts, logps: torch.Tensor) -> Rollouts:
    """``rollouts`` whose sampler log-probs are ``logps`` (the cross path reads the student's log-probs there)."""
    import dataclasses

    return dataclasses.replace(rollouts, rollout_logps=logps * rollouts.completion_mask)
