"""Plug-ins that extend the framework from outside: model/data references, verifiers, config nodes.

Why a registry: the framework must run on real checkpoints and real data
without knowing that the synthetic lab exists, yet a config may say
``model.student: lab:stage1`` and an eval may need the lab's verifiers.  A
plug-in is found through the ``mopdx.plugins`` entry-point group (the lab
registers itself in ``pyproject.toml``), so nothing under ``mopdx/`` imports
it; the run assembly asks the registry to resolve a ``<prefix>:<name>``
reference at its edge, and evaluation asks it for domain verifiers.

A plug-in object provides:

* ``prefix`` -- the reference prefix it resolves (``"lab:"``);
* ``config_key`` and ``Config`` -- a config node (dataclass) merged into the
  run schema (``lab:`` settings live under ``lab``);
* ``resolve(ref, node, progress) -> str`` -- a real path for a reference (may
  build artifacts);
* ``verifiers() -> dict[str, Verifier]`` -- exact verifiers per domain name;
* optionally ``check(ref, node)`` -- reject a bad reference without building it;
* optionally ``check_config(node)`` -- reject bad values of its config node,
  raising ``ConfigError`` whose one-line message names ``<config_key>.<field>``.
  ``load_config`` calls it, so a bad ``lab.*`` value fails in seconds instead of
  after (or during) a lab build;
* optionally ``default_configs(strategy) -> list[Path]`` -- YAML layers that make a
  complete run when the user names no data of their own (``defaults_apply``): the
  lab's student, teachers and data live there, so ``configs/base.yaml`` is lab-free
  and ``python -m mopdx fit`` still runs the lab;
* optionally ``commands`` -- ``{name: Command}``, CLI subcommands of its own
  (``python -m mopdx lab build``);
* optionally ``environments() -> dict[str, str]`` -- multi-turn environments by name,
  ``name -> "module:Class"`` (``env.environments.<d>=<name>``, mopdx/envs/).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from omegaconf import DictConfig, OmegaConf

from mopdx.errors import ConfigError

ENTRY_POINT_GROUP = "mopdx.plugins"


@runtime_checkable
class Plugin(Protocol):
    prefix: str
    config_key: str
    Config: type

    def resolve(self, ref: str, node: DictConfig, progress: bool = True) -> str: ...

    def verifiers(self) -> dict[str, Any]: ...  # domain -> mopdx.data.Verifier


@cache
def plugins() -> tuple[Plugin, ...]:
    """Every installed plug-in (loaded once per process)."""
    found = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        obj: Any = ep.load()
        found.append(obj() if isinstance(obj, type) else obj)
    return tuple(found)


def config_nodes() -> dict[str, type]:
    """``config_key -> Config`` of every plug-in (added to the run schema)."""
    return {p.config_key: p.Config for p in plugins()}


def plugin_for(ref: str) -> Plugin | None:
    return next((p for p in plugins() if str(ref).startswith(p.prefix)), None)


def is_remote(ref: str | os.PathLike[str]) -> bool:
    """A server URL (a served teacher), not a folder or a plug-in reference: resolved by no plug-in."""
    return str(ref).startswith(("http://", "https://"))


def resolve_ref(ref: str, cfg: DictConfig, progress: bool = True) -> str:
    """A real path for ``ref``: plug-in references (``lab:...``) are resolved by their
    plug-in (which may build them); anything else passes through unchanged."""
    plugin = plugin_for(ref)
    if plugin is None:
        return str(ref)
    return plugin.resolve(str(ref), cfg[plugin.config_key], progress)


def check_ref(ref: str, cfg: DictConfig, key: str) -> None:
    """Validate a reference without resolving it (config validation: nothing is built).

    A plug-in that can tell a bad name early has a ``check(ref, node)`` method."""
    plugin = plugin_for(ref)
    if plugin is None or not hasattr(plugin, "check"):
        return
    try:
        plugin.check(ref, cfg[plugin.config_key])
    except ConfigError as exc:
        raise ConfigError(f"{key}: {exc}") from None


WILDCARD = "*"


def expand_teachers(cfg: DictConfig) -> None:
    """Replace ``model.teachers."*"`` by one entry per domain of the plug-in the pattern names.

    Why: a lab experiment routes every lab domain to its own teacher, and the
    lab's domains are a setting (``lab.domains``); with ``"*": lab:teacher/{domain}``
    a config stays right whatever domains the lab is built with, and entries
    listed explicitly win over the pattern.  A pattern may be a panel,
    ``"*": {sharp: lab:teacher/{domain}, broad: lab:panel/broad_{domain}}``: every
    domain gets that panel.  Only plug-in references can be patterns: the
    framework does not know a run's domains before it reads the data, and
    failing at config load is the point."""
    teachers = cfg.model.teachers
    if WILDCARD not in teachers:
        return
    raw = teachers[WILDCARD]
    members = {str(k): str(v) for k, v in raw.items()} if OmegaConf.is_dict(raw) else None
    patterns = list(members.values()) if members is not None else [str(raw)]
    plugin = plugin_for(patterns[0]) if patterns else None
    domains = getattr(plugin, "domains", None)
    if plugin is None or domains is None or any("{domain}" not in p or plugin_for(p) is not plugin for p in patterns):
        shown = dict(members) if members is not None else str(raw)
        raise ConfigError(
            f"model.teachers.*={shown!r}: a wildcard teacher must be a plug-in reference containing {{domain}} "
            "(e.g. lab:teacher/{domain}), or a panel of them; give other teachers one per domain: model.teachers.<domain>=<folder>"
        )
    del teachers[WILDCARD]
    for d in domains(cfg[plugin.config_key]):
        if d not in teachers:
            teachers[d] = {k: v.replace("{domain}", d) for k, v in members.items()} if members is not None else patterns[0].replace("{domain}", d)


def check_config(cfg: DictConfig) -> None:
    """Let every plug-in that has a ``check_config(node)`` hook validate its config node."""
    for plugin in plugins():
        hook = getattr(plugin, "check_config", None)
        if hook is not None and plugin.config_key in cfg:
            hook(cfg[plugin.config_key])


def verifiers() -> dict[str, Any]:
    """Domain name -> verifier (a ``mopdx.data.Verifier``), from every plug-in."""
    out: dict[str, Any] = {}
    for p in plugins():
        out.update(p.verifiers())
    return out


@dataclass(frozen=True)
class Command:
    """A subcommand a plug-in adds to ``python -m mopdx``.  Like every command it takes
    ``--config``, ``--strategy``, ``--quiet`` and ``key=value`` overrides; ``run`` gets the
    parsed arguments and the loaded, checked config, and returns the exit status."""

    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace, DictConfig], int]


def commands() -> dict[str, Command]:
    """``name -> Command`` of every plug-in; two plug-ins claiming one name is an install error."""
    out: dict[str, Command] = {}
    for p in plugins():
        for name, cmd in (getattr(p, "commands", None) or {}).items():
            if name in out:
                raise ConfigError(f"two installed plug-ins add the command {name!r}; uninstall one of them")
            out[name] = cmd
    return out


# What makes a run the user's own: training data of its own (a file or folder, not a plug-in
# reference).  No plug-in's default layers are merged into such a run, so none of their
# teachers or data leak into it.  Models do not count: a lab run may swap its student or one
# teacher for a folder (``model.student=/ckpt/student``) and stay a lab run.
OWN_KEYS = ("data.train",)


def _flat(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [v for x in value.values() for v in _flat(x)]
    if isinstance(value, list):
        return [v for x in value for v in _flat(x)]
    return [] if value is None else [str(value)]


def defaults_apply(layers: list[DictConfig]) -> bool:
    """True unless a layer names training data of the user's own: a path, not a plug-in
    reference (``lab:...``) and not an interpolation (``${...}``)."""
    for layer in layers:
        for key in OWN_KEYS:
            found = OmegaConf.select(layer, key, default=None)
            value = OmegaConf.to_container(found, resolve=False) if OmegaConf.is_config(found) else found
            if any(v and not v.startswith("${") and plugin_for(v) is None for v in _flat(value)):
                return False
    return True


def default_configs(strategy: str) -> list[Path]:
    """The default YAML layers of every plug-in for a run of ``strategy`` (see ``defaults_apply``)."""
    return [Path(f) for p in plugins() for f in (p.default_configs(strategy) if hasattr(p, "default_configs") else [])]
