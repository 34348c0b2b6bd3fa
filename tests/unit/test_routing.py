"""Routing: every rollout is prefilled by its own domain's teacher."""

from __future__ import annotations

import pytest
import torch

from mopdx.backends.base import Rollouts, ScoreRequest, TeacherOutput
from mopdx.distill.routing import route_and_score, subset_teacher
from mopdx.errors import ConfigError


class TaggingTeacher:
    """Returns a constant tag per token and records which prompt rows it saw."""

    def __init__(self, tag: float) -> None:
        self.tag = tag
        self.seen: list[int] = []

    def score(self, rollouts: Rollouts, request: ScoreRequest) -> TeacherOutput:
        self.seen += rollouts.prompt_index.tolist()
        logps = torch.full(rollouts.completion_mask.shape, self.tag)
        k = request.topk
        return TeacherOutput(
            logps=logps,
            topk_ids=torch.full((*logps.shape, k), int(self.tag), dtype=torch.long) if k else None,
            topk_logps=torch.full((*logps.shape, k), self.tag) if k else None,
        )


def _rollouts(domains: list[str]) -> Rollouts:
    b, p, c = len(domains), 3, 4
    return Rollouts(
        input_ids=torch.arange(b * (p + c)).view(b, p + c),
        attention_mask=torch.ones(b, p + c, dtype=torch.long),
        prompt_len=p,
        completion_mask=torch.ones(b, c),
        rollout_logps=torch.zeros(b, c),
        domains=domains,
        prompt_index=torch.arange(b),
    )


def test_each_rollout_scored_by_its_domains_teacher() -> None:
    domains = ["add", "sort", "add", "reverse", "sort", "sort"]
    teachers = {"add": TaggingTeacher(1.0), "sort": TaggingTeacher(2.0), "reverse": TaggingTeacher(3.0)}
    out = route_and_score(_rollouts(domains), teachers, ScoreRequest(topk=2))
    tags = {"add": 1.0, "sort": 2.0, "reverse": 3.0}
    for i, d in enumerate(domains):
        assert torch.all(out.logps[i] == tags[d])
        assert torch.all(out.topk_ids[i] == int(tags[d]))
    assert sorted(teachers["add"].seen) == [0, 2]
    assert sorted(teachers["sort"].seen) == [1, 4, 5]
    assert teachers["reverse"].seen == [3]
    assert out.full_logps is None


def test_domain_without_teacher_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="no teacher for domain"):
        route_and_score(_rollouts(["add", "poetry"]), {"add": TaggingTeacher(1.0)}, ScoreRequest())


def test_subset_keeps_rows_in_order() -> None:
    out = TeacherOutput(logps=torch.arange(4.0).view(4, 1))
    picked = subset_teacher(out, torch.tensor([3, 1]))
    assert picked.logps.view(-1).tolist() == [3.0, 1.0]
    r = _rollouts(["a", "b", "c", "d"]).subset([2, 0])
    assert r.domains == ["c", "a"] and r.prompt_index.tolist() == [2, 0]
