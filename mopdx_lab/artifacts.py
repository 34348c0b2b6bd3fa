"""Writing lab artifacts atomically, so an interrupted build resumes at the first missing one.

Every stage and scenario writes into ``<name>.tmp`` and renames it when
complete; a folder that exists is therefore finished.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from mopdx_lab.tokenizer import save_tokenizer


def atomic_dir(final: Path) -> Path:
    """A fresh temporary sibling of ``final`` to write into."""
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def commit_dir(tmp: Path, final: Path) -> None:
    """Publish a finished temporary folder under its final name."""
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)


def save_model_folder(model: torch.nn.Module, tokenizer: Any, out: Path, info: dict[str, Any]) -> None:
    """Write a HF model folder atomically (temporary folder, then rename) with ``lab_info.json``."""
    tmp = atomic_dir(out)
    model.save_pretrained(tmp, safe_serialization=True)
    save_tokenizer(tokenizer, tmp)
    (tmp / "lab_info.json").write_text(json.dumps(info, indent=2))
    commit_dir(tmp, out)


def settings_digest(node: Any, drop: tuple[str, ...] = (), length: int = 10, later: dict[str, Any] | None = None) -> str:
    """A short hash of a config node: the cache key of a lab or scenario folder.  ``later``: settings
    added after folders were recorded, with the value that builds what came before; at that value a
    setting is left out, so the recorded folders stay theirs."""
    import hashlib

    from omegaconf import OmegaConf

    settings = OmegaConf.to_container(node, resolve=True)
    assert isinstance(settings, dict)
    for key in (*drop, *(k for k, neutral in (later or {}).items() if settings.get(k) == neutral)):
        settings.pop(key, None)
    return hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:length]
