"""The offline lab, a mopdx plug-in: synthetic domains with verifiers, a tokenizer, tiny Qwen2 models, stage builds and scenarios."""
