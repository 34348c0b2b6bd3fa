"""The training loss from the student's hidden states, chunk by chunk, without ``[B, C, V]`` float32 tensors.

Why: with a Qwen-family vocabulary (V = 151,936), batch 8 and 1,024
completion tokens, one float32 ``[B, C, V]`` tensor is ~5 GB, and the naive
step holds several (logits, log-softmax, their gradients) -- it runs out of
memory long before the model does.  Yet no loss reads the whole tensor:

- ``"sampled"`` and ``"topk"`` kinds read a few columns per position (the
  sampled token, the teacher's top-k ids).  Per chunk of completion tokens the
  student's logits are made from the hidden states, log-softmaxed in float32
  and only those columns kept; the loss then runs unchanged on the ``[B, C, m]``
  columns, with the batch's ids renumbered into them (``on_columns``), so its
  maths is the same code as the naive path's.
- ``"full"`` kinds read the whole distribution, so their per-token loss
  (``LossKind.per_token``) is computed per chunk and only ``[N]`` values kept.

Column kinds run each chunk under activation checkpointing: backward
recomputes that chunk's logits instead of keeping them, so the loss's peak
memory is one chunk's logits (``chunk_tokens x V``), not the batch's.  Full
kinds would pay that recompute twice over (a ``[N, V]`` softmax forward and
again in backward, most of their step when the hidden size is small: 1.37x
the naive step's time on an H200), so they take their gradient in the forward
pass instead (``_FullLossGradInForward``), as fused linear cross-entropy
kernels do: the batch reduction is linear in the per-token values, so each
chunk's share of the gradient is known as soon as the chunk is computed.  Logits stay in the
model's dtype until a chunk is reduced.  Only real completion tokens are
computed (padding after EOS is skipped).  Values and gradients equal the naive
path's (tests/unit/test_student_loss.py).
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from transformers import PreTrainedModel

from mopdx import losses
from mopdx.backends.base import Rollouts
from mopdx.backends.hf import completion_logits
from mopdx.text import position_ids_from_mask


def supports_chunking(model: PreTrainedModel) -> bool:
    """Whether the logits are ``lm_head(last hidden state)`` alone, which the chunked path assumes.

    Models that post-process logits (Gemma 2's soft-capping, Cohere's logit scale)
    take the naive path, which runs their own forward.
    """
    cfg = model.config
    plain = getattr(cfg, "final_logit_softcapping", None) is None and getattr(cfg, "logit_scale", None) in (None, 1.0)
    return plain and isinstance(model.get_output_embeddings(), torch.nn.Linear) and getattr(model, "base_model", model) is not model


def completion_hidden(model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_len: int) -> torch.Tensor:
    """The last hidden states that predict each completion token, ``[B, C, H]`` (``completion_logits`` before the head)."""
    out = model.base_model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids_from_mask(attention_mask), use_cache=False)
    return out.last_hidden_state[:, prompt_len - 1 : -1]


def on_columns(batch: losses.LossBatch, width: int) -> losses.LossBatch:
    """``batch`` with its ids renumbered into gathered columns: column 0 is the sampled
    token, columns ``1..k`` the teacher's top-k (the layout ``student_loss`` gathers)."""
    b, c = batch.completion_ids.shape
    topk = None
    if batch.topk_ids is not None:
        topk = torch.arange(1, width, device=batch.completion_ids.device).expand(b, c, width - 1)
    return replace(batch, completion_ids=torch.zeros_like(batch.completion_ids), topk_ids=topk)


def _chunked(fn: object, chunk_tokens: int, *rows: torch.Tensor) -> torch.Tensor:
    """``fn`` over row chunks of ``rows`` under activation checkpointing, concatenated."""
    n = rows[0].shape[0]
    outs = [checkpoint(fn, *(r[i : i + chunk_tokens] for r in rows), use_reentrant=False) for i in range(0, n, chunk_tokens)]  # type: ignore[arg-type]
    return torch.cat(outs)


def token_weights(mask: torch.Tensor, average: str, denominator: torch.Tensor | None) -> torch.Tensor:
    """``d loss / d value`` per token of ``losses.reduce_tokens``, ``[B, C]``: that reduction is
    linear in the values, so these weights are its whole gradient (asked of the reduction
    itself, so a new ``average`` needs no second copy here)."""
    probe = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device, requires_grad=True)
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(losses.reduce_tokens(probe, mask, average, denominator), probe)
    return grad


class _FullLossGradInForward(torch.autograd.Function):
    """``sum_i w_i * value_i`` over rows of hidden states, with ``value = fn(h @ W.T + b, rows)``
    per chunk, whose gradients (w.r.t. ``h``, ``W``, ``b``) are taken chunk by chunk in the
    forward pass and only scaled in backward: each chunk's logits are made once, never kept."""

    @staticmethod
    def forward(ctx, h, weight, bias, w_tok, fn, chunk_tokens, want_grad):  # type: ignore[override]
        need = [want_grad and t is not None and t.requires_grad for t in (h, weight, bias)]
        gh = torch.empty_like(h) if need[0] else None
        gw = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need[1] else None
        gb = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if need[2] else None
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        for i in range(0, h.shape[0], chunk_tokens):
            rows = slice(i, i + chunk_tokens)
            with torch.enable_grad():
                hc, wc = h[rows].detach().requires_grad_(need[0]), weight.detach().requires_grad_(need[1])
                bc = None if bias is None else bias.detach().requires_grad_(need[2])
                part = (fn(F.linear(hc, wc, bc).float(), rows) * w_tok[rows]).sum()
                inputs = [t for t, n in zip((hc, wc, bc), need) if n]
                grads = iter(torch.autograd.grad(part, inputs) if inputs else ())
            if need[0]:
                gh[rows] = next(grads)
            if need[1]:
                gw += next(grads)
            if need[2]:
                gb += next(grads)
            total += part.detach()
        ctx.save_for_backward(*(t for t in (gh, gw, gb) if t is not None))
        ctx.need, ctx.dtypes = need, (h.dtype, weight.dtype, None if bias is None else bias.dtype)
        return total

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        saved = iter(ctx.saved_tensors)
        grads = [(next(saved) * grad_out).to(dt) if n else None for n, dt in zip(ctx.need, ctx.dtypes)]
        return (*grads, None, None, None, None)


def student_loss(
    model: PreTrainedModel, rollouts: Rollouts, batch: losses.LossBatch, spec: losses.LossSpec, chunk_tokens: int,
    denominator: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The configured loss of ``model`` on ``rollouts`` and its diagnostics, as ``losses.compute_loss``
    on the full log-softmax would give; ``chunk_tokens <= 0`` (or a model with post-processed
    logits) takes that naive path.  ``denominator``: the reduction's (default: this batch's own)."""
    if chunk_tokens <= 0 or not supports_chunking(model):
        logps = torch.log_softmax(completion_logits(model, rollouts.input_ids, rollouts.attention_mask, rollouts.prompt_len), dim=-1)
        return losses.compute_loss(spec, logps, batch, denominator=denominator)
    hidden = completion_hidden(model, rollouts.input_ids, rollouts.attention_mask, rollouts.prompt_len)
    head = model.get_output_embeddings()
    rows, cols = batch.mask.nonzero(as_tuple=True)  # real completion tokens only
    h = hidden[rows, cols]  # [N, H]
    b, c = batch.mask.shape
    if spec.entry.needs == "full":
        per_token_fn = spec.entry.per_token
        assert per_token_fn is not None, f"loss {spec.kind!r} needs a per_token entry in LOSSES to be chunked"
        teacher = batch.need("full_logps", spec.kind)  # indexed per chunk: no [N, V] copy of it

        def full(logits: torch.Tensor, chunk: slice) -> torch.Tensor:
            return per_token_fn(torch.log_softmax(logits, dim=-1), teacher[rows[chunk], cols[chunk]], spec)

        w_tok = token_weights(batch.mask, spec.average, denominator)[rows, cols]
        loss = _FullLossGradInForward.apply(h, head.weight, head.bias, w_tok, full, chunk_tokens, torch.is_grad_enabled())
        return loss, {}
    ids = batch.completion_ids.unsqueeze(-1)
    if spec.entry.needs == "topk":
        ids = torch.cat([ids, batch.need("topk_ids", spec.kind)], dim=-1)

    def gather(hc: torch.Tensor, ic: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(head(hc).float(), dim=-1).gather(-1, ic)

    picked = _chunked(gather, chunk_tokens, h, ids[rows, cols])  # [N, m]
    columns = torch.zeros(b, c, ids.shape[-1], dtype=picked.dtype, device=picked.device).index_put((rows, cols), picked)
    return losses.compute_loss(spec, columns, on_columns(batch, ids.shape[-1]), denominator=denominator)
