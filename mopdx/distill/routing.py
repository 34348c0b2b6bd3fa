"""Route each rollout to its domain's teacher and merge the prefill results.

Rollouts of a mixed batch are grouped by domain, each group is prefilled by
its own teacher in one call, and the outputs are scattered back to batch
order, so downstream code never sees the grouping.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from mopdx.backends.base import Rollouts, ScoreRequest, TeacherOutput, TeacherScorer
from mopdx.errors import ConfigError


def group_by_domain(domains: list[str]) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = {}
    for i, d in enumerate(domains):
        groups.setdefault(d, []).append(i)
    return groups


def route_and_score(rollouts: Rollouts, teachers: Mapping[str, TeacherScorer], request: ScoreRequest) -> TeacherOutput:
    """Prefill every rollout with the teacher of its own domain."""
    groups = group_by_domain(rollouts.domains)
    missing = sorted(set(groups) - set(teachers))
    if missing:
        raise ConfigError(f"no teacher for domain(s) {missing}: add model.teachers.<domain>=<model folder>")
    parts = {d: teachers[d].score(rollouts.subset(idx), request) for d, idx in groups.items()}
    return _scatter(parts, groups, len(rollouts))


def _scatter(parts: dict[str, TeacherOutput], groups: dict[str, list[int]], size: int) -> TeacherOutput:
    def merge(attr: str) -> torch.Tensor | None:
        first = getattr(next(iter(parts.values())), attr)
        if first is None:
            return None
        out = first.new_zeros((size, *first.shape[1:]))
        for d, part in parts.items():
            out[torch.tensor(groups[d], device=out.device)] = getattr(part, attr).to(out.device)
        return out

    return TeacherOutput(
        logps=merge("logps"),  # type: ignore[arg-type]
        topk_ids=merge("topk_ids"),
        topk_logps=merge("topk_logps"),
        full_logps=merge("full_logps"),
    )


def subset_teacher(out: TeacherOutput, index: torch.Tensor) -> TeacherOutput:
    """The teacher outputs of the rollouts at ``index``."""

    def pick(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.index_select(0, index.to(t.device))

    return TeacherOutput(pick(out.logps), pick(out.topk_ids), pick(out.topk_logps), pick(out.full_logps))  # type: ignore[arg-type]
