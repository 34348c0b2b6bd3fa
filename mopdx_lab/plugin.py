"""The lab as a mopdx plug-in: ``lab:`` references, the ``lab`` config node, its default run, its CLI command, the lab verifiers.

Registered in ``pyproject.toml`` under ``[project.entry-points."mopdx.plugins"]``;
``mopdx.plugins`` finds it there, so the framework never imports the lab.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from mopdx.verifiers import Verifier
from mopdx_lab.config import LabConfig, check_lab
from mopdx_lab.domains import DOMAINS, get_domain
from mopdx_lab.commands import COMMANDS
from mopdx_lab.refs import LAB_PREFIX, check_ref, resolve_ref

CONFIGS = Path(__file__).resolve().parent / "configs"


class LabPlugin:
    """Resolves ``lab:<artifact>`` (building the lab on first use) and grades lab domains."""

    prefix = LAB_PREFIX
    config_key = "lab"
    Config = LabConfig
    commands = COMMANDS

    def default_configs(self, strategy: str) -> list[Path]:
        """The lab's run (student, teachers, data) and its scenario for ``strategy`` where it has one."""
        own = CONFIGS / "strategy" / f"{strategy}.yaml"
        return [CONFIGS / "run.yaml", *([own] if own.is_file() else [])]

    def resolve(self, ref: str, node: DictConfig, progress: bool = True) -> str:
        return resolve_ref(ref, node, progress=progress)

    def check(self, ref: str, node: DictConfig) -> None:
        """Validate a reference without building anything."""
        check_ref(ref, node)

    def check_config(self, node: DictConfig) -> None:
        """Validate the ``lab`` node at config load: a bad value must not cost a lab build."""
        check_lab(node, self.config_key)

    def domains(self, node: DictConfig) -> list[str]:
        """The lab's domains: what ``model.teachers."*": lab:teacher/{domain}`` expands over."""
        return [str(d) for d in node.domains]

    def environments(self) -> dict[str, str]:
        """The lab's multi-turn environment (``env.environments.<d>=lab_blocks``)."""
        return {"lab_blocks": "mopdx_lab.envs:BlockOracle"}

    def verifiers(self) -> dict[str, Verifier]:
        return {name: get_domain(name) for name in DOMAINS}


PLUGIN = LabPlugin()
