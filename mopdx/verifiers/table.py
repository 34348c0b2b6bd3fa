"""The verifier table: which verifier grades which domain, chosen in the config.

``data.verifiers`` maps a domain to a verifier spec:

* a built-in name -- ``math``, ``numeric``, ``choice``, ``exact``, ``regex``, ``code``;
* ``package.module:attr`` -- a user's own: a ``Verifier`` instance, a class
  (built with the options), or a function ``(answer, completion) -> bool``;
* a mapping with ``name`` and that verifier's options, e.g.
  ``{name: regex, pattern: "Result: (\\S+)"}`` or ``{name: numeric, rel_tol: 0.01}``.

Precedence for a domain: the config's table, else a plug-in's verifier (the
lab registers its domains' through ``mopdx.plugins``), else ``exact``.

Why a process-wide table: rewards, evaluation, baselines and OPCoD all ask
"what grades domain d?" deep inside their loops; the run assembly installs
the config's table once (``configure``) before anything is graded, exactly as
plug-ins are found once per process.  Specs are built at config load
(``check_specs``), so an unknown name, a bad option or a missing library is
one line before any model loads.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from typing import Any

from mopdx import plugins
from mopdx.errors import ConfigError
from mopdx.verifiers.base import Verifier, answer_leaks
from mopdx.verifiers.simple import EXACT_MATCH, ChoiceVerifier, ExactMatch, NumericVerifier, RegexVerifier


def _math(**options: Any) -> Verifier:
    from mopdx.verifiers.math_answer import MathVerifier

    return MathVerifier(**options)


def _code(**options: Any) -> Verifier:
    from mopdx.verifiers.code_exec import CodeVerifier

    return CodeVerifier(**options)


BUILTIN: dict[str, Callable[..., Verifier]] = {
    "math": _math,
    "numeric": NumericVerifier,
    "choice": ChoiceVerifier,
    "exact": ExactMatch,
    "regex": RegexVerifier,
    "code": _code,
}


class FunctionVerifier:
    """A user's ``(answer, completion) -> bool`` as a verifier (leaks: the generic whole-word check)."""

    def __init__(self, fn: Callable[[str, str], bool], name: str) -> None:
        self.fn, self.name = fn, name

    def verify(self, answer: str, completion: str) -> bool:
        return bool(self.fn(answer, completion))

    def leaks(self, feedback: str, answer: str) -> bool:
        return answer_leaks(feedback, answer)


def _user(ref: str, options: dict[str, Any], key: str) -> Verifier:
    module_name, _, attr = ref.partition(":")
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"{key}={ref!r}: cannot import it ({type(exc).__name__}: {exc}); give package.module:attribute on the Python path") from None
    if hasattr(obj, "verify") and not inspect.isclass(obj):
        return obj
    if not inspect.isclass(obj) and len(inspect.signature(obj).parameters) == 2 and not options:
        return FunctionVerifier(obj, ref)
    made = obj(**options)  # a class, or a factory taking the options
    if not hasattr(made, "verify"):
        raise ConfigError(f"{key}={ref!r} made a {type(made).__name__}, not a verifier (it needs verify(answer, completion) -> bool)")
    return made


def build(spec: Any, key: str = "data.verifiers") -> Verifier:
    """The verifier a spec names (see the module docstring); ``ConfigError`` naming ``key`` otherwise."""
    if isinstance(spec, Mapping) or hasattr(spec, "items"):
        options = {str(k): v for k, v in dict(spec).items()}
        name = options.pop("name", None)
        if not name:
            raise ConfigError(f"{key}: a verifier given as a mapping needs 'name' (one of {', '.join(BUILTIN)} or package.module:attr)")
    else:
        name, options = spec, {}
    name = str(name)
    if ":" in name:
        return _user(name, options, key)
    if name not in BUILTIN:
        raise ConfigError(f"{key}={name!r}: unknown verifier; built in: {', '.join(BUILTIN)}; or package.module:attr for your own")
    try:
        return BUILTIN[name](**options)
    except TypeError as exc:
        raise ConfigError(f"{key}: verifier {name!r} got an option it does not take ({exc})") from None
    except ConfigError as exc:
        raise ConfigError(f"{key}: {exc}") from None


def build_table(specs: Mapping[str, Any] | None, key: str = "data.verifiers") -> dict[str, Verifier]:
    """``domain -> verifier`` for every entry of ``specs``."""
    return {str(d): build(s, f"{key}.{d}") for d, s in (specs or {}).items()}


_CONFIGURED: dict[str, Verifier] = {}


def configure(specs: Mapping[str, Any] | None) -> dict[str, Verifier]:
    """Install the config's table for this process (replaces any earlier run's)."""
    table = build_table(specs)
    _CONFIGURED.clear()
    _CONFIGURED.update(table)
    return dict(table)


def verifier_for(domain: str) -> Verifier | None:
    """The configured or plug-in verifier of ``domain``; ``None``: nothing but the exact-match default."""
    return _CONFIGURED.get(domain) or plugins.verifiers().get(domain)


def grader(domain: str) -> Verifier:
    """What grades ``domain``: the configured verifier, else a plug-in's, else exact match."""
    return verifier_for(domain) or EXACT_MATCH


def check_gradable(examples: Any, source: str = "data.train") -> None:
    """Reference answers a domain's verifier cannot grade (a code task without tests): one line, before any model loads."""
    by_domain: dict[str, list[Any]] = {}
    for e in examples:
        by_domain.setdefault(e.domain, []).append(e)
    for domain, rows in sorted(by_domain.items()):
        check = getattr(grader(domain), "check_answer", None)
        if check is None:
            continue
        for i, e in enumerate(rows):
            problem = check(e.answer)
            if problem:
                bad = sum(1 for r in rows if check(r.answer))
                raise ConfigError(f"{source}: domain {domain!r}: {bad} of {len(rows)} examples cannot be graded, first {e.prompt[:50]!r}: {problem}")
