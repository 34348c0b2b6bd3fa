"""Prefill overlapped with sampling: chunked results equal one-shot results."""

from __future__ import annotations

from pathlib import Path

import torch

from mopdx.backends.base import Sampling, ScoreRequest
from mopdx.backends.hf import HFRolloutBackend, HFTeacherScorer
from mopdx.distill.pipeline import concat_rollouts, sample_and_prefill
from mopdx.distill.routing import route_and_score
from mopdx.models import load_model, load_tokenizer
from mopdx.text import encode_prompt


def test_chunked_prefill_equals_prefill_of_the_whole_batch(tiny_lab: Path) -> None:
    tok = load_tokenizer(tiny_lab / "models" / "stage1")
    backend = HFRolloutBackend(load_model(tiny_lab / "models" / "stage1"), tok.pad_token_id, tok.eos_token_id)
    teachers = {d: HFTeacherScorer(load_model(tiny_lab / "models" / "teacher" / d)) for d in ("add", "sort")}
    texts = ["sort: 5281", "add: 3 + 4", "sort: 1", "add: 29 + 29", "sort: 987654", "add: 0 + 0", "sort: 55"]
    ids, domains = [encode_prompt(tok, t) for t in texts], [t.split(":")[0] for t in texts]

    def sample(lo: int, hi: int, k: int):
        return backend.generate(ids[lo:hi], domains[lo:hi], Sampling(n=2, max_new_tokens=6, seed=10 + k))

    rollouts, teacher, times = sample_and_prefill(sample, len(texts), 3, teachers, ScoreRequest(topk=4), tok.pad_token_id)
    assert len(rollouts) == 14 and rollouts.domains[::2] == domains
    assert rollouts.prompt_index.tolist() == [i for i in range(7) for _ in range(2)]
    direct = route_and_score(rollouts, teachers, ScoreRequest(topk=4))  # the re-padded batch, scored at once
    m = rollouts.completion_mask.bool()
    assert torch.allclose(teacher.logps[m], direct.logps[m], atol=1e-5)
    assert torch.equal(teacher.topk_ids[m], direct.topk_ids[m])
    assert times.sample_s > 0 and times.prefill_s > 0 and 0 <= times.exposed_s and times.hidden_frac <= 1
    # the chunks' token ids survive re-padding
    parts = [sample(0, 3, 0), sample(3, 6, 1), sample(6, 7, 2)]
    merged = concat_rollouts(parts, tok.pad_token_id)
    for i, part in enumerate(parts):
        for j in range(len(part)):
            row = merged.input_ids[sum(len(p) for p in parts[:i]) + j][merged.attention_mask[sum(len(p) for p in parts[:i]) + j].bool()]
            assert torch.equal(row, part.input_ids[j][part.attention_mask[j].bool()])
