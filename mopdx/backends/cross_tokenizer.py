"""Teachers with another tokenizer (``model.cross_tokenizer=true``): re-tokenise, prefill, map back.

Why: the best teacher for a domain is often another model family, with another
tokenizer, so its per-token log-probs are for other tokens than the student's.  The
method (for the PG form: one log-prob per student token):

1. The student's prompt and completion are decoded to text (special tokens kept, so a
   chat template's markers reach the teacher as text it may know) and encoded by the
   teacher's tokenizer, prompt and completion apart (the completion starts on a boundary);
   a final EOS maps to the teacher's EOS.
2. The teacher prefills its own tokens: ``log p_T`` per teacher token.
3. The two tokenisations are cut into *chunks* at the character offsets where both have a
   token boundary.  A chunk's teacher log-prob (the sum over its teacher tokens) is the
   teacher's log-prob of that span of text, and it is conserved: the chunk's last student
   token carries it, less the student's own log-probs of the chunk's earlier tokens, which
   get the student's log-prob (advantage 0).  So the student tokens of a chunk sum to the
   teacher's log-prob of the chunk, a teacher that behaves like the student gives ~0
   advantage, and where the tokenisations agree token for token every token gets its own
   teacher log-prob, as with a shared tokenizer.
4. Where the teacher's tokens do not decode back to the same text (a normalising
   tokenizer), the whole completion is one chunk, carried by its last token.  Bytes that are
   not valid UTF-8 (a byte-level student can sample them) become U+FFFD in the text, and the
   teacher scores that character: their span's log-prob is the teacher's of the replacement.

Compared with published methods: ULD (Boizard et al., 2024) drops token identity and
matches sorted probability vectors with a Wasserstein-style loss; GOLD (TRL) aligns the
two sequences and merges the probabilities of the tokens of aligned spans, as here, and
adds ULD's loss on the unaligned vocabularies.  mopdx keeps to the sampled-token
log-prob, the one quantity the PG form needs, so only ``loss.kind=pg`` is supported; the
top-k and full kinds need a distribution over the student's vocabulary, which another
tokenizer does not give (refused at config load).
"""

from __future__ import annotations

import itertools

import torch

from mopdx.backends.base import Rollouts, ScoreRequest, TeacherOutput
from mopdx.backends.hf import completion_logits
from mopdx.errors import ConfigError
from mopdx.text import left_pad, right_pad


def token_ends(tokenizer, ids: list[int]) -> tuple[str, list[int]]:
    """The text of ``ids`` and the character offset where each token ends.  Tokens decoded one by
    one when their pieces add up to the text (the usual case, one decode per token); otherwise by
    prefix decodes (byte-level tokens that split a character end where the character does)."""
    opts = {"skip_special_tokens": False, "clean_up_tokenization_spaces": False}
    text = tokenizer.decode(ids, **opts)
    pieces = [tokenizer.decode([i], **opts) for i in ids]
    if "".join(pieces) == text:
        return text, list(itertools.accumulate(len(p) for p in pieces))
    ends = [len(tokenizer.decode(ids[: i + 1], **opts)) for i in range(len(ids))]
    for i in range(len(ends) - 2, -1, -1):  # a later decode may rewrite a partial character: keep ends monotone
        ends[i] = min(ends[i], ends[i + 1])
    return text, ends


def chunk_of(student_ends: list[int], teacher_ends: list[int]) -> tuple[list[int], list[int]]:
    """Chunk index of each student token and of each teacher token: chunks end at the
    offsets both tokenisations end a token at (the text's end is always one)."""
    common = sorted(set(student_ends) & set(teacher_ends))
    if not common or common[-1] != max(student_ends[-1] if student_ends else 0, teacher_ends[-1] if teacher_ends else 0):
        common.append(max([*student_ends, *teacher_ends, 0]))

    def index(ends: list[int]) -> list[int]:
        out, c = [], 0
        for e in ends:
            while common[c] < e:
                c += 1
            out.append(c)
        return out

    return index(student_ends), index(teacher_ends)


def map_back(student_logps: list[float], student_chunks: list[int], teacher_logps: list[float], teacher_chunks: list[int]) -> list[float]:
    """One teacher log-prob per student token: each chunk's teacher log-prob (summed over its
    teacher tokens) on the chunk's last student token, less the student's log-probs of the
    chunk's earlier tokens, which get their own (so each chunk's sum is conserved)."""
    total: dict[int, float] = {}
    for lp, c in zip(teacher_logps, teacher_chunks):
        total[c] = total.get(c, 0.0) + lp
    out = list(student_logps)
    last = {c: i for i, c in enumerate(student_chunks)}
    for c, i in last.items():
        earlier = sum(student_logps[k] for k in range(len(student_chunks)) if student_chunks[k] == c and k != i)
        out[i] = total.get(c, 0.0) - earlier
    return out


class CrossTokenizerScorer:
    """A local teacher whose tokenizer differs from the student's (PG only)."""

    def __init__(self, model, teacher_tokenizer, student_tokenizer, temperature: float = 1.0) -> None:
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.tt, self.st, self.temperature = teacher_tokenizer, student_tokenizer, temperature

    def retokenise(self, prompt: list[int], completion: list[int]) -> tuple[list[int], list[int], list[int], list[int], bool]:
        """Teacher prompt ids, teacher completion ids, and the student's / teacher's token ends in the completion text."""
        eos = bool(completion) and completion[-1] == self.st.eos_token_id
        body = completion[:-1] if eos else completion
        text, s_ends = token_ends(self.st, body)
        t_prompt = self.tt(self.st.decode(prompt, skip_special_tokens=False, clean_up_tokenization_spaces=False), add_special_tokens=False).input_ids
        t_body = self.tt(text, add_special_tokens=False).input_ids if text else []
        t_text, t_ends = token_ends(self.tt, t_body)
        if t_text != text:  # the teacher's tokenizer normalised the text: one chunk for the whole completion
            t_ends = [len(text)] * len(t_body)
            s_ends = [0] * (len(s_ends) - 1) + [len(text)] if s_ends else []
        return t_prompt, t_body + ([self.tt.eos_token_id] if eos else []), s_ends, t_ends, eos

    @torch.no_grad()
    def score(self, rollouts: Rollouts, request: ScoreRequest) -> TeacherOutput:
        if request.topk or request.full:
            raise ConfigError("a teacher with another tokenizer (model.cross_tokenizer) gives sampled-token log-probs only: use loss.kind=pg")
        seqs, starts = rollouts.unpadded()
        rows = [self.retokenise(seq[:k], seq[k:]) for seq, k in zip(seqs, starts)]
        device = next(self.model.parameters()).device
        p_ids, p_mask = left_pad([r[0] for r in rows], self.tt.pad_token_id)
        c_ids, c_mask = right_pad([r[1] for r in rows], self.tt.pad_token_id, width=max(1, max(len(r[1]) for r in rows)))
        ids = torch.cat([p_ids, c_ids], 1).to(device)
        mask = torch.cat([p_mask, c_mask], 1).to(device)
        logits = completion_logits(self.model, ids, mask, p_ids.shape[1]) / self.temperature
        t_lp = torch.log_softmax(logits, -1).gather(-1, c_ids.to(device).unsqueeze(-1)).squeeze(-1).cpu()
        out = torch.zeros_like(rollouts.rollout_logps, dtype=torch.float32, device="cpu")
        s_lp = rollouts.rollout_logps.detach().float().cpu()
        for i, (_, t_body, s_ends, t_ends, eos) in enumerate(rows):
            n_body = len(s_ends)
            s_chunks, t_chunks = chunk_of(s_ends, t_ends)
            nt = len(t_ends)
            mapped = map_back(s_lp[i, :n_body].tolist(), s_chunks, t_lp[i, :nt].tolist(), t_chunks) if n_body else []
            if eos:
                mapped.append(float(t_lp[i, nt]))  # EOS is a chunk of its own on both sides
            out[i, : len(mapped)] = torch.tensor(mapped)
        return TeacherOutput(logps=out.to(rollouts.rollout_logps.device) * rollouts.completion_mask)
