"""The documentation: the site builds in strict mode, every CLI subcommand, config node and
strategy has its section, the README stays a README, and git holds no large file."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mopdx.cli import build_parser
from mopdx.config import load_config
from mopdx.strategy import available_strategies

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"


def _headings(page: str) -> set[str]:
    return {m.group(1).strip() for m in re.finditer(r"^#{2,3} (.+)$", (DOCS / page).read_text(), re.M)}


def test_every_cli_subcommand_has_a_section() -> None:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    missing = [name for name in sub.choices if name not in _headings("cli.md")]  # type: ignore[union-attr]
    assert not missing, f"docs/cli.md has no '## <command>' section for: {missing}"


@pytest.mark.parametrize("strategy", ["mopd", "camopd", "cascade", "opcod"])
def test_every_config_node_has_a_row(strategy: str) -> None:
    page = (DOCS / "configuration.md").read_text()
    missing = [node for node in load_config(strategy) if f"| `{node}` |" not in page]
    assert not missing, f"docs/configuration.md's node table lacks: {missing}"


def test_every_registered_strategy_has_a_section() -> None:
    missing = [name for name in available_strategies() if name not in _headings("strategies.md")]
    assert not missing, f"docs/strategies.md has no section for: {missing}"


def test_each_experiment_report_says_question_setup_result_finding_caveats() -> None:
    for page in sorted((DOCS / "experiments").glob("*.md")):
        if page.name == "index.md":
            continue
        text = page.read_text().lower()
        missing = [part for part in ("question", "setup", "result", "finding", "caveat") if part not in text]
        assert not missing, f"{page.name} lacks {missing}"


def test_the_readme_is_a_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 300
    assert "../shared" not in readme  # a clone has no ../shared: the docs are in the repository
    assert not re.search(r"\bsession \d+\b|\bissue \d+\b", readme, re.I), "work-log labels belong in git, not the README"


def test_no_file_in_git_over_1_mb_outside_the_docs_images() -> None:
    if not (ROOT / ".git").exists() or shutil.which("git") is None:
        pytest.skip("not a git checkout")
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout.decode().split("\0")
    big = [f for f in files if f and (ROOT / f).is_file() and not (ROOT / f).is_symlink()
           and (ROOT / f).stat().st_size > 1_000_000 and not (f.startswith("docs/") and f.endswith((".png", ".svg", ".jpg")))]
    assert not big, f"files over 1 MB in git: {big}"


@pytest.mark.slow
def test_the_site_builds_in_strict_mode(tmp_path: Path) -> None:
    """Broken links, missing pages, a failing generated section or a bad docstring fail CI."""
    pytest.importorskip("mkdocs", reason="pip install -e '.[test]' (it brings mkdocs-material, mkdocstrings, mkdocs-jupyter)")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "TQDM_DISABLE": "1"}
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (tmp_path / "site" / "configuration" / "index.html").read_text().count("<tr>") > 100  # the generated key tables
    assert (tmp_path / "site" / "notebooks" / "gradient_coherence" / "index.html").is_file()
