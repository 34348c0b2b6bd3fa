"""Tiny Qwen2-architecture models built from a config, never downloaded.

The lab uses the real ``Qwen2ForCausalLM`` class so everything downstream
(generation, prefill, vLLM loading, weight sync) exercises the same code as
a real checkpoint.  The lm_head gets a smaller init std: the default init
gives near-uniform next-token entropy, which makes early training slow.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedTokenizerBase, Qwen2Config, Qwen2ForCausalLM

# The spec lives with the lab's settings (a config node, validated without importing transformers).
from mopdx_lab.config import TinyModelSpec

__all__ = ["TinyModelSpec", "build_tiny_qwen2"]


def build_tiny_qwen2(spec: TinyModelSpec, tokenizer: PreTrainedTokenizerBase, seed: int = 0) -> Qwen2ForCausalLM:
    """A randomly initialised Qwen2 whose vocabulary matches ``tokenizer``."""
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        max_position_embeddings=spec.max_position_embeddings,
        tie_word_embeddings=False,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.pad_token_id,
        torch_dtype="float32",
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    with torch.no_grad():
        model.lm_head.weight.normal_(0.0, spec.lm_head_std)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model
