"""The embedded ``transformers`` backend: batched ``generate`` and prefill.

This is the default on CPU and the reference the other backends are checked
against.  Rollouts share the student module with the trainer, so weight sync
is a no-op and sampling is exactly on-policy.
"""

from __future__ import annotations

import torch
from transformers import LogitsProcessorList, PreTrainedModel

from mopdx.backends.base import Rollouts, Sampling, ScoreRequest, TeacherOutput
from mopdx.backends.keyed import KeyedGumbel, row_keys
from mopdx.text import left_pad, position_ids_from_mask


def completion_logits(model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_len: int) -> torch.Tensor:
    """Logits predicting each completion token: ``[B, C, V]`` in float32."""
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        use_cache=False,
    )
    return out.logits[:, prompt_len - 1 : -1].float()


def completion_mask_from_ids(completion_ids: torch.Tensor, eos_id: int) -> torch.Tensor:
    """1.0 for tokens up to and including the first EOS, 0.0 after it."""
    is_eos = (completion_ids == eos_id).long()
    after_eos = (is_eos.cumsum(-1) - is_eos) > 0
    return (~after_eos).float()


class HFRolloutBackend:
    """Samples with ``model.generate`` on left-padded prompt batches."""

    reads_trainer_weights = True  # samples the trained module itself: weight sync is a no-op

    def __init__(self, model: PreTrainedModel, pad_id: int, eos_id: int) -> None:
        self.model, self.pad_id, self.eos_id = model, pad_id, eos_id

    @torch.no_grad()
    def generate(self, prompt_ids: list[list[int]], domains: list[str], sampling: Sampling) -> Rollouts:
        device = next(self.model.parameters()).device
        was_training = self.model.training
        self.model.eval()
        ids, mask = left_pad(prompt_ids, self.pad_id)
        ids, mask = ids.to(device), mask.to(device)
        s = sampling
        kwargs = dict(
            max_new_tokens=s.max_new_tokens,
            num_return_sequences=s.per_prompt,
            return_dict_in_generate=True,
            output_scores=True,
            pad_token_id=self.pad_id,
            eos_token_id=self.eos_id,
        )
        keyed = None
        if s.greedy:
            kwargs.update(do_sample=False, top_k=None, top_p=None, temperature=None)
        elif s.keyed:  # greedy over keyed-Gumbel-perturbed logits is an exact sample (keyed.py)
            rows = torch.tensor(row_keys(s.seed or 0, s.prompt_keys(len(prompt_ids)), s.per_prompt), device=device)
            keyed = KeyedGumbel(rows, ids.shape[1], s.temperature, s.top_k, s.top_p)
            kwargs.update(do_sample=False, top_k=None, top_p=None, temperature=None, output_scores=False, logits_processor=LogitsProcessorList([keyed]),
                          num_return_sequences=1)
            ids, mask = ids.repeat_interleave(s.per_prompt, 0), mask.repeat_interleave(s.per_prompt, 0)  # greedy takes one sequence per row
        else:
            kwargs.update(do_sample=True, temperature=s.temperature, top_p=s.top_p, top_k=s.top_k)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            if s.seed is not None:
                torch.manual_seed(s.seed)
            out = self.model.generate(input_ids=ids, attention_mask=mask, **kwargs)
        if was_training:
            self.model.train()
        reps = s.per_prompt
        prompt_len = ids.shape[1]
        seq = out.sequences
        completion = seq[:, prompt_len:]
        cmask = completion_mask_from_ids(completion, self.eos_id)
        # [B*n, C, V] processed (sampling) logits: those the tokens were drawn from
        scores = torch.stack(keyed.scores if keyed is not None else out.scores, dim=1).float()
        logps = torch.log_softmax(scores, dim=-1).gather(-1, completion.unsqueeze(-1)).squeeze(-1)
        logps = torch.where(cmask.bool(), logps, torch.zeros_like(logps))
        full_mask = torch.cat([mask if keyed is not None else mask.repeat_interleave(reps, 0), cmask.long()], dim=1)
        index = torch.arange(len(prompt_ids), device=device).repeat_interleave(reps)
        return Rollouts(
            input_ids=seq,
            attention_mask=full_mask,
            prompt_len=prompt_len,
            completion_mask=cmask,
            rollout_logps=logps,
            domains=[domains[i] for i in index.tolist()],
            prompt_index=index,
        )

    def sync_weights(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Nothing to do: the backend samples from the trainer's own module."""


class HFTeacherScorer:
    """A frozen local teacher: one ``no_grad`` forward per rollout batch."""

    def __init__(self, model: PreTrainedModel, temperature: float = 1.0) -> None:
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.temperature = temperature

    @torch.no_grad()
    def score(self, rollouts: Rollouts, request: ScoreRequest) -> TeacherOutput:
        device = next(self.model.parameters()).device
        logits = completion_logits(self.model, rollouts.input_ids.to(device), rollouts.attention_mask.to(device), rollouts.prompt_len)
        logp = torch.log_softmax(logits / self.temperature, dim=-1)
        sampled = logp.gather(-1, rollouts.completion_ids.to(device).unsqueeze(-1)).squeeze(-1)
        out = TeacherOutput(logps=sampled)
        if request.topk:
            k = min(request.topk, logp.shape[-1])
            out.topk_logps, out.topk_ids = logp.topk(k, dim=-1)
        if request.full:
            out.full_logps = logp
        return out
