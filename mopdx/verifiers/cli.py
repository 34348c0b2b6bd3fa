"""``python -m mopdx verify``: grade answer/completion pairs with one verifier, no run needed.

Why: when a domain's accuracy is 0 on real data, the question is always
"what did the verifier read?".  Each pair prints one line -- ``correct`` or
``wrong``, then the extracted answer (``(none)`` when the verifier found no
answer; ``(could not grade: ...)`` when it raised) -- and the command exits 0
whatever the verdicts, so it can sit in a shell loop.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import yaml

from mopdx.errors import DataError
from mopdx.verifiers.base import extracted
from mopdx.verifiers.table import BUILTIN, build


def add_parser(sub: Any) -> None:
    p = sub.add_parser("verify", help="grade answer/completion pairs with a verifier (debug a domain's grading without a run)")
    p.add_argument("--verifier", required=True, help=f"built-in ({', '.join(BUILTIN)}) or package.module:attr")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="verifier option, e.g. pattern='Result: (\\S+)' or rel_tol=0.01")
    p.add_argument("--answer", default=None, help="reference answer (with --completion)")
    p.add_argument("--completion", default=None, help="model completion to grade")
    p.add_argument("--file", type=Path, default=None, help="JSONL of {\"answer\": ..., \"completion\": ...} pairs")


def _options(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise DataError(f"--option {item!r} must be KEY=VALUE")
        try:
            parsed = yaml.safe_load(value) if value else ""
        except yaml.YAMLError:
            parsed = value
        out[key] = parsed if isinstance(parsed, (int, float, bool)) else value  # a pattern stays the text typed
    return out


def _pairs(args: argparse.Namespace) -> list[tuple[str, str]]:
    if args.file is None:
        if args.answer is None or args.completion is None:
            raise DataError("give --answer and --completion, or --file with a JSONL of answer/completion pairs")
        return [(args.answer, args.completion)]
    if not args.file.is_file():
        raise DataError(f"--file {args.file} not found")
    pairs = []
    for n, line in enumerate(args.file.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            pairs.append((str(obj["answer"]), str(obj["completion"])))
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise DataError(f"{args.file}:{n}: expected a JSON object with 'answer' and 'completion' ({exc})") from None
    if not pairs:
        raise DataError(f"--file {args.file} has no pairs")
    return pairs


def _show(text: str | None) -> str:
    if text is None:
        return "(none)"
    one_line = text.replace("\n", "\\n")
    return one_line if len(one_line) <= 200 else one_line[:197] + "..."


def verdict_line(verifier: Any, answer: str, completion: str) -> str:
    """``correct <extracted>`` / ``wrong <extracted>`` for one pair (a raising verifier: wrong, and why)."""
    try:
        ok = bool(verifier.verify(answer, completion))
        found = extracted(verifier, completion)
    except Exception as exc:  # noqa: BLE001 -- the point is to show it
        return f"wrong (could not grade: {type(exc).__name__}: {exc})"
    return f"{'correct' if ok else 'wrong'} {_show(found)}"


def cmd_verify(args: argparse.Namespace) -> int:
    spec: Any = {"name": args.verifier, **_options(args.option)} if args.option else args.verifier
    verifier = build(spec, "--verifier")
    for answer, completion in _pairs(args):
        print(verdict_line(verifier, answer, completion), flush=True)
    return 0
