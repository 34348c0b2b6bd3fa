"""Where the repository's config folders are, importable without torch (the CLI's parser needs it)."""

from __future__ import annotations

from pathlib import Path


def configs_dir() -> Path:
    """The repository's ``configs/`` folder (next to the package in a checkout)."""
    here = Path(__file__).resolve().parent.parent / "configs"
    return here if here.is_dir() else Path.cwd() / "configs"


def scenarios_dir() -> Path:
    """``configs/experiment/scenarios/``: one YAML per ``compare --scenario`` preset."""
    return configs_dir() / "experiment" / "scenarios"


def scenario_names() -> list[str]:
    """The presets ``compare --scenario`` knows: the YAML files of ``scenarios_dir()``."""
    return sorted(p.stem for p in scenarios_dir().glob("*.yaml"))
