"""Reading prompt data the way researchers have it: JSONL, Parquet and ``datasets`` folders.

``data.train`` / ``data.eval`` is one source or a list of them; a source is a
path (or a plug-in reference such as ``lab:train``) or a mapping::

    data:
      train:
        - {path: data/gsm8k.parquet, domain: math}          # one domain for the whole file
        - {path: data/medqa/, split: train, fields: {prompt: question}}
      fields: {answer: final_answer}                          # defaults for every source

Files are read through Hugging Face ``datasets`` (``.jsonl``/``.json``,
``.parquet``, a folder written by ``save_to_disk``), so anything that library
reads is a source.  A row becomes an ``Example`` by its field map (defaults:
``prompt``, ``answer``, ``domain``, ``messages``, ``system``):

* ``messages`` (chat rows, ``[{role, content}, ...]``): system turns are the
  system prompt, the last user turn is the prompt, the turns between are its
  context, and a final assistant turn is the reference answer when the row has
  no answer field;
* a list-valued answer (a code task's ``tests``) is joined by newlines;
* no system prompt in the row: the source's ``system``, else
  ``data.system_prompts.<domain>``, else ``data.system_prompts."*"``.

Why all of this before a model loads: a field the file does not have, a file
with no rows or a domain without a label is one line naming the file and
the fields it has, in a second, not an error in step one.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mopdx.data import Example, load_prompts
from mopdx.errors import DataError

DEFAULT_FIELDS = {"prompt": "prompt", "answer": "answer", "domain": "domain", "messages": "messages", "system": "system"}
SOURCE_KEYS = ("path", "domain", "fields", "system", "split")


@dataclass(frozen=True)
class Source:
    path: str
    domain: str = ""  # constant domain of every row ("" = the row's domain field)
    fields: dict[str, str] = field(default_factory=dict)
    system: str = ""
    split: str = ""  # a DatasetDict folder's split
    where: str = "data.train"  # the config key, for messages

    def field_map(self, defaults: Mapping[str, str]) -> dict[str, str]:
        return {**DEFAULT_FIELDS, **dict(defaults), **self.fields}


def sources(value: Any, key: str) -> list[Source]:
    """The sources a ``data.train`` / ``data.eval`` value names (shape errors are one line naming ``key``)."""
    is_list = isinstance(value, Sequence) and not isinstance(value, str)
    items = list(value) if is_list else [value]
    if not items:
        raise DataError(f"{key} is an empty list: give a prompt file, a list of files, or a lab: reference")
    out = []
    for i, item in enumerate(items):
        where = f"{key}[{i}]" if is_list else key
        if isinstance(item, str):
            if not item:
                raise DataError(f"{where} is empty: give a JSONL / Parquet file, a datasets folder or a lab: reference")
            out.append(Source(item, where=where))
            continue
        if not hasattr(item, "items"):
            raise DataError(f"{where}={item!r}: expected a path or a mapping with 'path' (and optionally {', '.join(SOURCE_KEYS[1:])})")
        spec = {str(k): v for k, v in dict(item).items()}
        unknown = sorted(set(spec) - set(SOURCE_KEYS))
        if unknown or not spec.get("path"):
            raise DataError(f"{where}: a source needs 'path' and may have {', '.join(SOURCE_KEYS[1:])}; got keys {sorted(spec)}")
        fields = {str(k): str(v) for k, v in dict(spec.get("fields") or {}).items()}
        bad = sorted(set(fields) - set(DEFAULT_FIELDS))
        if bad:
            raise DataError(f"{where}.fields: unknown role(s) {bad}; a field map maps {', '.join(DEFAULT_FIELDS)} to column names")
        out.append(Source(str(spec["path"]), str(spec.get("domain") or ""), fields, str(spec.get("system") or ""), str(spec.get("split") or ""), where))
    return out


def _quiet_datasets() -> Any:
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    return datasets


def read_rows(path: Path, split: str = "", where: str = "data.train") -> list[dict[str, Any]]:
    """Every row of a JSONL / JSON / Parquet file or a ``datasets`` folder, as dicts."""
    if not path.exists():
        raise DataError(f"{where}: {path} not found (a .jsonl, .json or .parquet file, or a folder written by datasets' save_to_disk)")
    if path.is_file() and path.stat().st_size == 0:
        raise DataError(f"{where}: {path} is empty: it needs at least one row")
    ds = _quiet_datasets()
    try:
        if path.is_dir():
            data = ds.load_from_disk(str(path))
            if isinstance(data, ds.DatasetDict):
                splits = list(data)
                if not split and len(splits) == 1:
                    split = splits[0]
                if split not in data:
                    raise DataError(f"{where}: {path} holds splits {splits}: choose one with split: <name>")
                data = data[split]
        elif path.suffix == ".parquet":
            data = ds.Dataset.from_parquet(str(path), keep_in_memory=True)
        elif path.suffix in (".jsonl", ".json"):
            data = ds.Dataset.from_json(str(path), keep_in_memory=True)
        else:
            raise DataError(f"{where}: {path}: unknown format {path.suffix!r}; use .jsonl, .json, .parquet or a datasets folder")
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 -- arrow/json errors become one line naming the file
        raise DataError(f"{where}: cannot read {path} ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None
    rows = data.to_list()
    if not rows:
        raise DataError(f"{where}: {path} has no rows")
    return rows


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return "\n".join(_text(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value)
    return str(value)


def _chat(messages: Any, where: str) -> tuple[str, tuple[tuple[str, str], ...], str, str]:
    """``(system, context, prompt, final assistant answer)`` of a ``messages`` list."""
    turns = [(str(m.get("role", "")), _text(m.get("content"))) for m in messages or [] if isinstance(m, dict)]
    if not turns:
        raise DataError(f"{where}: a 'messages' row has no turns with role and content")
    answer = turns.pop()[1] if turns[-1][0] == "assistant" else ""
    if not turns or turns[-1][0] != "user":
        raise DataError(f"{where}: a 'messages' row must end with a user turn (or user then assistant); roles: {[r for r, _ in turns]}")
    system = "\n".join(c for r, c in turns if r == "system")
    rest = [(r, c) for r, c in turns if r != "system"]
    return system, tuple(rest[:-1]), rest[-1][1], answer


def _default_system(domain: str, src: Source, system_prompts: Mapping[str, str]) -> str:
    """The system prompt of a row that has none: the source's, else the domain's, else ``"*"``'s."""
    return src.system or system_prompts.get(domain, "") or system_prompts.get("*", "")


def to_examples(rows: list[dict[str, Any]], src: Source, fields: Mapping[str, str], system_prompts: Mapping[str, str], path: Path) -> list[Example]:
    """Rows of one source as ``Example``s by its field map (see the module docstring)."""
    fmap = src.field_map(fields)
    columns = list(rows[0])
    has = set(columns)
    where = f"{src.where} ({path})"
    explicit = {**dict(fields), **src.fields}
    for role in ("prompt", "answer", "domain", "messages", "system"):
        if role in explicit and fmap[role] not in has:
            raise DataError(f"{where}: no field {fmap[role]!r} (data.fields.{role}); the file's fields: {', '.join(columns)}")
    if fmap["prompt"] not in has and fmap["messages"] not in has:
        raise DataError(f"{where}: no prompt field {fmap['prompt']!r} and no {fmap['messages']!r}; the file's fields: {', '.join(columns)}; "
                        "map yours with data.fields.prompt=<field>")
    if not src.domain and fmap["domain"] not in has:
        raise DataError(f"{where}: no domain field {fmap['domain']!r}; the file's fields: {', '.join(columns)}; "
                        "give the file one domain ({path: ..., domain: math}) or map a field with data.fields.domain=<field>")
    out = []
    for i, row in enumerate(rows):
        domain = src.domain or _text(row.get(fmap["domain"]))
        system, context, answer = _text(row.get(fmap["system"])), (), _text(row.get(fmap["answer"]))
        if fmap["prompt"] in has and row.get(fmap["prompt"]) not in (None, ""):
            prompt = _text(row[fmap["prompt"]])
        else:
            msg_system, context, prompt, last = _chat(row.get(fmap["messages"]), f"{where} row {i}")
            system, answer = system or msg_system, answer or last
        if not domain or not prompt:
            raise DataError(f"{where} row {i}: empty {'domain' if not domain else 'prompt'}")
        system = system or _default_system(domain, src, system_prompts)
        out.append(Example(domain=domain, prompt=prompt, answer=answer, system=system, context=context))
    return out


def load_examples(value: Any, data_cfg: Any, key: str, resolve: Callable[[str], str]) -> list[Example]:
    """Every example ``value`` (``data.train`` or ``data.eval``) names, in order.

    ``resolve`` turns a plug-in reference into a path (it may build it); the
    framework's own JSONL schema is read directly, everything else through ``datasets``."""
    fields = dict(getattr(data_cfg, "fields", None) or {})
    system_prompts = dict(getattr(data_cfg, "system_prompts", None) or {})
    out: list[Example] = []
    for src in sources(value, key):
        path = Path(resolve(src.path))
        if _own_schema(path, src, fields):
            rows = load_prompts(path)
            if src.domain:
                rows = [Example(src.domain, e.prompt, e.answer, e.system, e.context) for e in rows]
            if system_prompts or src.system:
                rows = [e if e.system else Example(e.domain, e.prompt, e.answer, _default_system(e.domain, src, system_prompts), e.context)
                        for e in rows]
            out += rows
        else:
            out += to_examples(read_rows(path, src.split, src.where), src, fields, system_prompts, path)
    return out


def _own_schema(path: Path, src: Source, fields: Mapping[str, str]) -> bool:
    """A ``.jsonl`` in the framework's schema with no field map: the fast reader (the lab's files) suffices."""
    if path.suffix != ".jsonl" or fields or src.fields or not path.is_file() or path.stat().st_size == 0:
        return False
    with path.open() as fh:
        first = fh.readline()
    try:
        obj = json.loads(first)
    except json.JSONDecodeError:
        return False
    return isinstance(obj, dict) and "prompt" in obj and "domain" in obj and "messages" not in obj and isinstance(obj.get("answer", ""), str)
