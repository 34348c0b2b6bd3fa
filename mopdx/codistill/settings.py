"""The co-distillation loop's settings: the ``codistill`` config node, and its checks.

Why a node of its own rather than fields of the strategy node: these settings belong to
the two-peer loop (``mopdx.codistill.module``) whatever strategy runs in it -- which
models are the peers, which weights read the privileged context, the divergence, the
context formats -- while ``strategy.*`` holds what the strategy decides (OPCoD's gating
and anchoring).  "strategy" then means one thing.  Torch-free: the run schema
(``mopdx.config``) includes it, and a bad value must fail before anything heavy loads.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import DictConfig

from mopdx.codistill.privileged import FEEDBACK_SOURCES, PRIVILEGED_DEFAULTS, Templates
from mopdx.config_checks import (
    BOOL,
    POSITIVE_INT,
    PROBABILITY_OPEN,
    check,
    check_fields,
    check_names,
    check_ref,
    contains,
    fail,
    nonempty,
    number,
    one_of,
)
from mopdx.errors import ConfigError

# codistill.divergence -> its row of the one loss table (mopdx.losses.LOSSES)
DIVERGENCE_LOSS = {"reverse_kl": "full_reverse_kl", "jsd": "jsd"}
DIVERGENCES = tuple(DIVERGENCE_LOSS)
# Which weights read the privileged context: the peer's current ones, an EMA of them, a copy
# refreshed every ``refresh_every`` steps, or -- a control that reads the plain prompt -- the
# other peer's initial weights (one-way MOPD).  Domain-routed MOPD (each domain taught by the
# initial peer strong at it) is a plain MOPD run: configs/experiment/opcod_routed_mopd.yaml.
TEACHER_COPIES = ("current", "ema", "refreshed", "peer")
# the controls whose teacher is a frozen initial peer on the plain prompt (no context, no feedback)
PLAIN_TEACHERS = ("peer",)
ROUTED_HINT = ("codistill.teacher=routed is now a plain MOPD run: each peer as the student of both specialists "
               "(python -m mopdx compare --scenario opcod_routed, or fit --strategy mopd with configs/experiment/opcod_routed_mopd.yaml)")
# Each context template and the placeholder it must contain (``Templates.check``); the lab's
# ``lab.opcod.*_template`` fields are checked against the same table.
TEMPLATE_PLACEHOLDERS = {"teacher_template": "{prompt}", "solution_template": "{solution}",
                         "feedback_template": "{feedback}", "feedback_prompt_template": "{prompt}"}


@dataclass
class CoDistillConfig:
    """Settings of the co-distillation loop (the ``codistill`` node; read only by co-distillation strategies)."""

    peers: dict[str, str] = field(default_factory=dict)  # name -> model folder or reference; exactly two
    strong_domain: dict[str, str] = field(default_factory=dict)  # each peer's strong domain: the report's roles
    feedback_max_tokens: int = 16
    divergence: str = "reverse_kl"  # reverse_kl | jsd
    jsd_alpha: float = 0.5
    teacher: str = "current"  # current | ema | refreshed | peer (TEACHER_COPIES)
    ema_decay: float = 0.99
    refresh_every: int = 10  # teacher=refreshed: steps between copies of the peer's weights
    feedback_source: str = "peer"  # peer | self | shuffled (privileged.route_feedback)
    measure_flips: bool = True  # greedy answer with feedback on prompts the peer got wrong
    measure_teacher: bool = True  # greedy answer of the teacher reading its context, on the step's prompts
    teacher_template: str = PRIVILEGED_DEFAULTS.teacher
    solution_template: str = PRIVILEGED_DEFAULTS.solution
    feedback_template: str = PRIVILEGED_DEFAULTS.feedback
    feedback_prompt_template: str = PRIVILEGED_DEFAULTS.feedback_prompt


def templates_of(s: DictConfig) -> Templates:
    return Templates(s.teacher_template, s.solution_template, s.feedback_template, s.feedback_prompt_template)


def check_codistill_values(cfg: DictConfig) -> None:
    """The ``codistill`` node's values, on every run (``config_checks.validate``): a bad value fails
    in one line even where no co-distillation reads it, like every other node."""
    s = cfg.codistill
    if s.teacher == "routed":
        raise ConfigError(ROUTED_HINT)
    check_fields(s, "codistill", {
        "feedback_max_tokens": POSITIVE_INT, "divergence": one_of(*DIVERGENCES), "jsd_alpha": PROBABILITY_OPEN,
        "teacher": one_of(*TEACHER_COPIES), "ema_decay": number(0, 1, hi_open=True), "measure_flips": BOOL,
        "refresh_every": POSITIVE_INT, "feedback_source": one_of(*FEEDBACK_SOURCES), "measure_teacher": BOOL,
        **{name: contains(ph) for name, ph in TEMPLATE_PLACEHOLDERS.items()},
    })
    for peer, domain in s.strong_domain.items():
        check(f"codistill.strong_domain.{peer}", domain, nonempty("a domain name"))


def check_codistill(cfg: DictConfig) -> None:
    """What a co-distillation run needs besides valid values: two peers, the hf backend."""
    s = cfg.codistill
    if cfg.rollout.backend != "hf":
        raise fail("rollout.backend", cfg.rollout.backend,
                   "hf (the co-distillation loop samples two trained peers, and their feedback, in process; a vLLM engine "
                   "holds and syncs one trained model, so two peers would need two engines, which mopdx does not build)")
    if len(s.peers) != 2:
        raise fail("codistill.peers", s.peers, "exactly two peers, name -> model folder or lab:<artifact> reference")
    for name, ref in s.peers.items():
        check_ref(f"codistill.peers.{name}", ref, cfg, "a model folder or a lab:<artifact> reference")
    check_names("codistill.strong_domain", list(s.strong_domain), list(s.peers), source="codistill.peers", allow_empty=True)
