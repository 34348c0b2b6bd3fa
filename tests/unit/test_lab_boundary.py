"""The lab is a plug-in (mopdx_lab): the framework neither imports it nor names its domains,
its base config names no lab artifact, and the lab's command and defaults come through the
plug-in hooks (``mopdx.plugins``)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from mopdx.cli import COMMANDS, build_parser
from mopdx.config import load_config
from mopdx.errors import ConfigError
from mopdx.paths import configs_dir
from mopdx_lab.domains import DOMAINS

ROOT = Path(__file__).resolve().parents[2]
FRAMEWORK = [p for pkg in ("mopdx", "mopdx_strategies") for p in sorted((ROOT / pkg).rglob("*.py"))]


def _imports(tree: ast.AST) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
    return out


def test_no_framework_module_imports_the_lab() -> None:
    bad = [str(p.relative_to(ROOT)) for p in FRAMEWORK
           if any(m == "mopdx_lab" or m.startswith("mopdx_lab.") for m in _imports(ast.parse(p.read_text())))]
    assert not bad, f"framework modules importing the lab: {bad}"


def test_no_framework_string_is_a_lab_domain_name() -> None:
    """Code (string constants), not prose: a lab domain as a default or a branch is the lab leaking in."""
    names = set(DOMAINS) | {"rotp", "uprot"}  # the scenarios' drawn domains too
    bad = []
    for p in FRAMEWORK:
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names:
                bad.append(f"{p.relative_to(ROOT)}:{node.lineno} {node.value!r}")
    assert not bad, bad


def _values(node: object) -> list[str]:
    if isinstance(node, dict):
        return [v for k, x in node.items() for v in [str(k), *_values(x)]]
    if isinstance(node, list):
        return [v for x in node for v in _values(x)]
    return [str(node)]


@pytest.mark.parametrize("path", [configs_dir() / "base.yaml", *sorted((configs_dir() / "strategy").glob("*.yaml"))], ids=lambda p: p.name)
def test_framework_configs_name_no_lab_artifact_or_setting(path: Path) -> None:
    values = _values(yaml.safe_load(path.read_text()) or {})
    assert not [v for v in values if v.startswith("lab:") or "${lab." in v or v == "lab" or v in DOMAINS], values


def test_the_lab_run_is_the_default_and_data_of_ones_own_drops_it(tmp_path: Path) -> None:
    cfg = load_config("mopd", [], [f"lab.root={tmp_path}"])
    assert cfg.model.student == "lab:stage1" and cfg.data.train == "lab:train"
    assert set(cfg.model.teachers) == set(cfg.lab.domains)
    # a student or one teacher swapped for a folder: still the lab's run
    swapped = load_config("mopd", [], [f"lab.root={tmp_path}", "model.student=/ckpt/s", "model.teachers.rot=/ckpt/rot"])
    assert swapped.model.teachers.rot == "/ckpt/rot" and swapped.model.teachers.inc == "lab:teacher/inc"
    # training data of one's own: none of the lab's models leak into the run
    with pytest.raises(ConfigError, match="model.teachers is empty"):
        load_config("mopd", [], ["data.train=/data/train.jsonl", "data.eval=/data/eval.jsonl", "model.student=/ckpt/student"])
    with pytest.raises(ConfigError, match="model.student"):
        load_config("mopd", [], ["data.train=/data/train.jsonl", "data.eval=/data/eval.jsonl", "model.teachers.math=/ckpt/math"])


def test_the_lab_command_comes_from_the_plugin() -> None:
    assert "lab" not in COMMANDS
    args, _ = build_parser().parse_known_args(["lab", "info", "--quiet"])
    assert args.command == "lab" and args.action == "info" and args.plugin_command.run is not None


def test_no_import_circle_between_files() -> None:
    """Every module of the three packages, imports inside functions included (they hide circles)."""
    from graphlib import CycleError, TopologicalSorter

    files = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
             for pkg in ("mopdx", "mopdx_strategies", "mopdx_lab") for p in (ROOT / pkg).rglob("*.py")}

    def known(m: str) -> str | None:
        while m and m not in files:
            m = m.rpartition(".")[0]
        return m or None

    graph = {}
    for name, path in files.items():
        deps = {known(m) for m in _imports(ast.parse(path.read_text()))} - {None, name}
        if path.name == "__init__.py":  # a package importing its own children is not a circle of files
            deps = {d for d in deps if not d.startswith(name + ".")}
        graph[name] = deps
    try:
        TopologicalSorter(graph).prepare()
    except CycleError as exc:
        pytest.fail(f"import circle: {' -> '.join(exc.args[1])}")
