"""Rules for config values, and the ``setting`` that attaches one to a schema field.

Why here, torch-free and import-free: a config value is defined once -- its type
and default in the schema dataclass (``mopdx.config``), its allowed values as the
``rule`` of its ``setting`` beside them -- and everything else is derived from that
one place: the checks (``mopdx.config_checks.validate`` walks the fields),
``config keys`` (every key, its value and what it allows: ``config_rows``) and the
loss spec (``mopdx.losses.LossSpec`` takes its fields' defaults from the schema).
The schema imports this module, so it imports nothing of mopdx's but the errors.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from mopdx.errors import ConfigError

SEED_MAX = 2**32 - 1  # numpy's seed range, which Lightning's seed_everything enforces


@dataclass(frozen=True)
class Rule:
    """A test on one value and the words that say what passes it."""

    ok: Callable[[Any], bool]
    allowed: str


def show(value: Any) -> str:
    """A value as the user would type it after ``key=`` (one line)."""
    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value, resolve=True)
    if value is None:
        return "null"
    if isinstance(value, str):
        return repr(value) if value == "" or "\n" in value else value
    if isinstance(value, list):
        return "[" + ", ".join(show(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {show(v)}" for k, v in value.items()) + "}"
    return str(value)


def fail(key: str, value: Any, allowed: str) -> ConfigError:
    return ConfigError(f"{key}={show(value)} is invalid; allowed: {allowed}")


def check(key: str, value: Any, rule: Rule) -> None:
    if not rule.ok(value):
        raise fail(key, value, rule.allowed)


def check_fields(node: DictConfig, prefix: str, rules: Mapping[str, Rule]) -> None:
    """Apply ``rules`` (field name -> rule) to the fields of ``node`` (keys shown as ``prefix.field``)."""
    for name, rule in rules.items():
        check(f"{prefix}.{name}", node[name], rule)


def _interval(lo: float | None, hi: float | None, lo_open: bool, hi_open: bool) -> str:
    if lo is not None and hi is not None:
        return f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    if lo is not None:
        return f"{'>' if lo_open else '>='} {lo:g}"
    if hi is not None:
        return f"{'<' if hi_open else '<='} {hi:g}"
    return ""


def number(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False, hi_open: bool = False,
           integer: bool = False, null: str | None = None, note: str = "") -> Rule:
    """A finite number within bounds; ``null`` (its meaning) admits None, ``note`` explains a value."""
    what = ("an integer" if integer else "a finite number") if lo is None and hi is None else ("an integer" if integer else "a number")

    def ok(v: Any) -> bool:
        if v is None:
            return null is not None
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return False
        return ((lo is None or (v > lo if lo_open else v >= lo))
                and (hi is None or (v < hi if hi_open else v <= hi)))

    allowed = " ".join(x for x in (what, _interval(lo, hi, lo_open, hi_open)) if x)
    allowed += f" ({note})" if note else ""
    allowed += f", or null ({null})" if null else ""
    return Rule(ok, allowed)


def one_of(*choices: str) -> Rule:
    return Rule(lambda v: v in choices, "one of " + ", ".join(choices))


def nonempty(what: str = "a non-empty string") -> Rule:
    return Rule(lambda v: isinstance(v, str) and v.strip() != "", what)


def contains(placeholder: str) -> Rule:
    return Rule(lambda v: isinstance(v, str) and placeholder in v, f"a string containing {placeholder}")


BOOL = Rule(lambda v: isinstance(v, bool), "true or false")
SEED = number(0, SEED_MAX, integer=True)
POSITIVE_INT = number(1, integer=True)
PROBABILITY_OPEN = number(0, 1, lo_open=True, hi_open=True)




def setting(default: Any = dataclasses.MISSING, rule: Rule | None = None, *, factory: Callable[[], Any] | None = None) -> Any:
    """A schema field with its default (or ``factory``) and the ``rule`` its values must pass."""
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata={"rule": rule})
    return dataclasses.field(default=default, metadata={"rule": rule})


def field_rules(node: DictConfig, prefix: str = "") -> Iterator[tuple[str, Any, Rule]]:
    """``(dotted key, value, rule)`` of every field of a structured config node (and its nested
    dataclass nodes) whose ``setting`` carries a rule, in schema order."""
    schema = node._metadata.object_type
    if not dataclasses.is_dataclass(schema):
        return
    for f in dataclasses.fields(schema):
        key = f"{prefix}{f.name}"
        child = node._get_node(f.name)
        if isinstance(child, DictConfig) and dataclasses.is_dataclass(child._metadata.object_type):
            yield from field_rules(child, key + ".")
        elif f.metadata.get("rule") is not None:
            yield key, node[f.name], f.metadata["rule"]


def config_rows(node: DictConfig, prefix: str = "") -> Iterator[tuple[str, str, str]]:
    """``(dotted key, value as typed after key=, allowed values)`` of every leaf of a loaded config,
    structured nodes walked (the strategy's and plug-ins' nodes too): what ``config keys`` prints.
    A field without a rule of its own has an empty "allowed" (it is checked with the run:
    references, dict entries, cross-field rules)."""
    schema = node._metadata.object_type
    rules = {f.name: f.metadata.get("rule") for f in dataclasses.fields(schema)} if dataclasses.is_dataclass(schema) else {}
    for name in node:
        child = node._get_node(name)
        key = f"{prefix}{name}"
        if isinstance(child, DictConfig) and dataclasses.is_dataclass(child._metadata.object_type):
            yield from config_rows(child, key + ".")
            continue
        rule = rules.get(str(name))
        yield key, show(node[name]), rule.allowed if rule is not None else ""
