"""Teacher prefill overlapped with student sampling.

The step's prompts are sampled in chunks; as soon as a chunk's rollouts
exist, their prefill is submitted to a worker thread and runs while the next
chunk is sampled (torch and vLLM release the GIL in their kernels; remote
teachers wait on the network).  What the step still waits for after the last
chunk is sampled is the prefill time *not hidden*; it is logged next to the
sampling and prefill times.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import torch

from mopdx.backends.base import Rollouts, ScoreRequest, TeacherOutput, TeacherScorer
from mopdx.distill.routing import route_and_score


@dataclass
class StepTimes:
    sample_s: float  # wall time spent sampling
    prefill_s: float  # summed prefill time of all chunks
    exposed_s: float  # prefill time the step waited for after sampling ended

    @property
    def hidden_frac(self) -> float:
        return 1.0 - self.exposed_s / self.prefill_s if self.prefill_s > 0 else 0.0


def concat_rollouts(parts: list[Rollouts], pad_id: int) -> Rollouts:
    """One batch from chunks with different prompt / completion widths (re-padded)."""
    if len(parts) == 1:
        return parts[0]
    p = max(r.prompt_len for r in parts)
    c = max(r.completion_ids.shape[1] for r in parts)

    def pad(r: Rollouts) -> tuple[torch.Tensor, ...]:
        lp, rc = p - r.prompt_len, c - r.completion_ids.shape[1]
        prompt = torch.nn.functional.pad(r.input_ids[:, : r.prompt_len], (lp, 0), value=pad_id)
        pmask = torch.nn.functional.pad(r.attention_mask[:, : r.prompt_len], (lp, 0), value=0)
        comp = torch.nn.functional.pad(r.completion_ids, (0, rc), value=pad_id)
        cmask_full = torch.nn.functional.pad(r.attention_mask[:, r.prompt_len :], (0, rc), value=0)
        return (torch.cat([prompt, comp], 1), torch.cat([pmask, cmask_full], 1), torch.nn.functional.pad(r.completion_mask, (0, rc)),
                torch.nn.functional.pad(r.rollout_logps, (0, rc)))

    padded = [pad(r) for r in parts]
    offsets = [0]
    for r in parts[:-1]:
        offsets.append(offsets[-1] + int(r.prompt_index.max().item()) + 1)
    return Rollouts(
        input_ids=torch.cat([x[0] for x in padded]),
        attention_mask=torch.cat([x[1] for x in padded]),
        prompt_len=p,
        completion_mask=torch.cat([x[2] for x in padded]),
        rollout_logps=torch.cat([x[3] for x in padded]),
        domains=[d for r in parts for d in r.domains],
        prompt_index=torch.cat([r.prompt_index + o for r, o in zip(parts, offsets)]),
        episode_rewards=None if parts[0].episode_rewards is None else torch.cat([r.episode_rewards for r in parts]),
    )


def concat_teacher(parts: list[TeacherOutput], width: int) -> TeacherOutput:
    """Teacher outputs of chunks, completion dimension padded to ``width``."""

    def cat(attr: str, value: float) -> torch.Tensor | None:
        ts = [getattr(t, attr) for t in parts]
        if ts[0] is None:
            return None
        return torch.cat([torch.nn.functional.pad(t, (0, 0) * (t.dim() - 2) + (0, width - t.shape[1]), value=value) for t in ts])

    return TeacherOutput(cat("logps", 0.0), cat("topk_ids", 0), cat("topk_logps", -1e9), cat("full_logps", 0.0))  # type: ignore[arg-type]


def sample_and_prefill(
    sample: Callable[[int, int, int], Rollouts],
    n_prompts: int,
    chunk: int,
    teachers: Mapping[str, TeacherScorer],
    request: ScoreRequest,
    pad_id: int,
    pool: ThreadPoolExecutor | None = None,
) -> tuple[Rollouts, TeacherOutput, StepTimes]:
    """Sample prompts ``[lo, hi)`` chunk by chunk via ``sample(lo, hi, chunk_index)``;
    prefill each chunk in the background as soon as it exists.

    With one chunk (``chunk`` 0 or >= ``n_prompts``) nothing runs in the
    background: sample, then prefill, and all of the prefill is exposed.
    """
    chunk = chunk if chunk > 0 else n_prompts
    durations: list[float] = []

    def prefill(r: Rollouts) -> TeacherOutput:
        t = time.perf_counter()
        out = route_and_score(r, teachers, request)
        durations.append(time.perf_counter() - t)
        return out

    if chunk >= n_prompts:
        t0 = time.perf_counter()
        rollouts = sample(0, n_prompts, 0)
        t1 = time.perf_counter()
        teacher = prefill(rollouts)
        return rollouts, teacher, StepTimes(sample_s=t1 - t0, prefill_s=durations[0], exposed_s=durations[0])
    own = pool is None
    pool = pool or ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefill")
    t0 = time.perf_counter()
    parts: list[Rollouts] = []
    futures: list[Future[TeacherOutput]] = []
    for k, lo in enumerate(range(0, n_prompts, chunk)):
        r = sample(lo, min(n_prompts, lo + chunk), k)
        parts.append(r)
        futures.append(pool.submit(prefill, r))
    t1 = time.perf_counter()
    outs = [f.result() for f in futures]
    t2 = time.perf_counter()
    if own:
        pool.shutdown()
    rollouts = concat_rollouts(parts, pad_id)
    teacher = concat_teacher(outs, rollouts.completion_ids.shape[1])
    return rollouts, teacher, StepTimes(sample_s=t1 - t0, prefill_s=sum(durations), exposed_s=t2 - t1)
