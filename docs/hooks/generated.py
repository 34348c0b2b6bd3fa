"""MkDocs hook: the docs' generated parts, made from the code at build time.

Why generated: the configuration reference and the command-line usage must not be
hand-copied (they would drift from the schema and the parser); a marker in a page is
replaced by what the code says now.

* ``<!-- config-keys: STRATEGY [NODE ...] -->`` -- every key of a run of ``STRATEGY`` with the
  lab's defaults (only those of the NODEs when given), its value and its allowed values
  (``mopdx.rules.config_rows``);
* ``<!-- cli-usage: COMMAND -->`` -- ``python -m mopdx COMMAND --help``.
"""

from __future__ import annotations

import re
from typing import Any

MARKER = re.compile(r"<!-- (config-keys|cli-usage): ([\w-]+)((?: [\w.]+)*) -->")


def _config_keys(strategy: str, nodes: list[str]) -> str:
    from mopdx.config import load_config
    from mopdx.rules import config_rows

    rows = ["| key | value | allowed |", "|---|---|---|"]
    for key, value, allowed in config_rows(load_config(strategy)):
        if nodes and key.split(".")[0] not in nodes:
            continue
        cell = value.replace("|", "\\|").replace("\n", " ")
        rows.append(f"| `{key}` | `{cell}` | {allowed.replace('|', '/')} |" if cell else f"| `{key}` | | {allowed} |")
    return "\n".join(rows)


def _cli_usage(command: str) -> str:
    from mopdx.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    text = (sub.choices[command] if command != "mopdx" else parser).format_help()  # type: ignore[union-attr]
    return f"```text\n{text.rstrip()}\n```"


def on_page_markdown(markdown: str, **_: Any) -> str:
    def fill(m: re.Match[str]) -> str:
        return _config_keys(m.group(2), m.group(3).split()) if m.group(1) == "config-keys" else _cli_usage(m.group(2))

    return MARKER.sub(fill, markdown)
