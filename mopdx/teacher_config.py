"""Which teachers score a domain, and how several are combined: the settings and their checks.

Torch-free on purpose: a config is checked before anything heavy is imported.  A domain's
entry in ``model.teachers`` is one reference (a folder, a ``lab:`` reference, a server URL,
or replicas ``"url,url"`` / a YAML list of URLs) or a mapping ``name -> reference``: a panel
of teachers on every rollout of that domain, combined as ``model.combine.<domain>`` says
(``mopdx.backends.panel``; default: their equal-weight mixture).  ``model.cross_tokenizer``
lets a local teacher's tokenizer differ from the student's (``mopdx.backends.cross_tokenizer``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf

from mopdx.errors import ConfigError
from mopdx.rules import one_of, setting

RULES = ("mixture", "advantage", "closest", "confident")
# the loss kinds each rule can feed; the full-distribution kinds also need teachers that send one
RULE_KINDS = {
    "mixture": ("pg", "topk", "full_reverse_kl", "forward_kl", "jsd"),
    "advantage": ("pg",),
    "closest": ("pg", "topk", "full_reverse_kl", "forward_kl", "jsd"),
    "confident": ("pg", "topk", "full_reverse_kl", "forward_kl", "jsd"),
}


@dataclass
class CombineConfig:
    """How a domain's panel of teachers is combined (``model.combine.<domain>``)."""

    rule: str = setting("mixture", one_of(*RULES))
    weights: list[float] = field(default_factory=list)  # one per teacher, in the panel's order; [] = equal
    weights_end: list[float] = field(default_factory=list)  # [] = fixed; else linear to these over train.max_steps


def panel_of(ref: Any) -> dict[str, str] | None:
    """A domain's panel (name -> reference), or None for a single teacher."""
    if OmegaConf.is_dict(ref) or isinstance(ref, dict):
        return {str(k): str(v) for k, v in ref.items()}
    return None


def teacher_roles(cfg: DictConfig, domain: str) -> dict[str, str]:
    """Role -> reference of a domain's teachers: ``teacher 'd'`` for one, ``teacher 'd'/name`` for a panel."""
    ref = cfg.model.teachers[domain]
    panel = panel_of(ref)
    if panel is None:
        return {f"teacher {domain!r}": str(ref)}
    return {f"teacher {domain!r}/{name}": r for name, r in panel.items()}


def check_teachers(cfg: DictConfig) -> None:
    """Panels, their combination and cross-tokenizer teachers, before any model loads."""
    kind = cfg.loss.kind
    for d, ref in cfg.model.teachers.items():
        panel = panel_of(ref)
        if panel is None:
            continue
        if not panel:
            raise ConfigError(f"model.teachers.{d} is an empty panel: name one teacher or more (model.teachers.{d}.<name>=<folder>)")
    for d, c in cfg.model.combine.items():
        panel = panel_of(cfg.model.teachers.get(d))
        if panel is None:
            raise ConfigError(f"model.combine.{d} is set but model.teachers.{d} is not a panel: give it teachers by name "
                              f"(model.teachers.{d}.<name>=<folder>) or drop model.combine.{d}")
        for key in ("weights", "weights_end"):
            w = list(c[key])
            if not w:
                continue
            if len(w) != len(panel):
                raise ConfigError(f"model.combine.{d}.{key} has {len(w)} weights for {len(panel)} teachers ({', '.join(panel)}): one per teacher")
            if any(float(x) < 0 for x in w) or sum(float(x) for x in w) <= 0:
                raise ConfigError(f"model.combine.{d}.{key}={w}: weights >= 0 that sum to a positive number")
        if kind not in RULE_KINDS[c.rule]:
            raise ConfigError(f"model.combine.{d}.rule={c.rule} cannot feed loss.kind={kind} (the weighted sum of advantages is a PG "
                              f"rule): use loss.kind=pg or rule mixture, closest or confident")
        served = [n for n, r in panel.items() if r.startswith(("http://", "https://"))]
        if c.rule == "mixture" and kind == "topk" and (served or cfg.model.teacher_backend == "vllm"):
            raise ConfigError(f"model.combine.{d}.rule=mixture with loss.kind=topk needs every teacher's full distribution (the mixture's "
                              "top-k): use local hf teachers, loss.kind=pg, or a per-token rule (closest, confident)")
    if cfg.model.cross_tokenizer:
        if kind != "pg":
            raise ConfigError(f"model.cross_tokenizer=true with loss.kind={kind}: a teacher with another tokenizer gives one log-prob per "
                              "student token, not a distribution over the student's vocabulary; use loss.kind=pg")
        if cfg.model.teacher_backend != "hf":
            raise ConfigError("model.cross_tokenizer=true needs model.teacher_backend=hf (teachers with another tokenizer are prefilled by transformers)")


def teacher_keys(models: dict[str, str], domains: list[str]) -> dict[str, str]:
    """Teacher key -> folder or URL from a run's checked roles: ``d`` for a domain's one teacher,
    ``d/name`` for each member of its panel (``teacher_roles``' names)."""
    out: dict[str, str] = {}
    for d in domains:
        if f"teacher {d!r}" in models:
            out[d] = models[f"teacher {d!r}"]
        prefix = f"teacher {d!r}/"
        out.update({f"{d}/{role[len(prefix):]}": path for role, path in models.items() if role.startswith(prefix)})
    return out


def split_key(key: str) -> tuple[str, str | None]:
    """A teacher key's domain and panel member name (``d`` -> (d, None), ``d/name`` -> (d, name))."""
    d, _, name = key.partition("/")
    return d, name or None


def domain_of(key: str) -> str:
    """The domain of a teacher key (``d`` or ``d/name``)."""
    return split_key(key)[0]
