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
from mopdx.config_checks import check_names, check_ref
from mopdx.rules import BOOL, POSITIVE_INT, PROBABILITY_OPEN, Rule, check, contains, fail, nonempty, number, one_of, setting

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
# Each context template and the placeholder it must contain (``Templates.check``); the lab's
# ``lab.opcod.*_template`` fields are checked against the same table.
TEMPLATE_PLACEHOLDERS = {"teacher_template": "{prompt}", "solution_template": "{solution}",
                         "feedback_template": "{feedback}", "feedback_prompt_template": "{prompt}"}
# one of TEACHER_COPIES; the line for the retired ``routed`` says where it went
TEACHER = Rule(lambda v: v in TEACHER_COPIES, "one of " + ", ".join(TEACHER_COPIES) + " (domain-routed MOPD is a plain MOPD run now: "
               "compare --scenario opcod_routed, or fit --strategy mopd --config configs/experiment/opcod_routed_mopd.yaml)")


@dataclass
class CoDistillConfig:
    """Settings of the co-distillation loop (the ``codistill`` node; read only by co-distillation strategies)."""

    peers: dict[str, str] = field(default_factory=dict)  # name -> model folder or reference; exactly two (check_codistill)
    strong_domain: dict[str, str] = field(default_factory=dict)  # each peer's strong domain: the report's roles
    feedback_max_tokens: int = setting(16, POSITIVE_INT)
    divergence: str = setting("reverse_kl", one_of(*DIVERGENCES))
    jsd_alpha: float = setting(0.5, PROBABILITY_OPEN)
    teacher: str = setting("current", TEACHER)  # which weights read the privileged context (TEACHER_COPIES)
    ema_decay: float = setting(0.99, number(0, 1, hi_open=True))
    refresh_every: int = setting(10, POSITIVE_INT)  # teacher=refreshed: steps between copies of the peer's weights
    feedback_source: str = setting("peer", one_of(*FEEDBACK_SOURCES))  # privileged.route_feedback
    measure_flips: bool = setting(True, BOOL)  # greedy answer with feedback on prompts the peer got wrong
    measure_teacher: bool = setting(True, BOOL)  # greedy answer of the teacher reading its context, on the step's prompts
    teacher_template: str = setting(PRIVILEGED_DEFAULTS.teacher, contains(TEMPLATE_PLACEHOLDERS["teacher_template"]))
    solution_template: str = setting(PRIVILEGED_DEFAULTS.solution, contains(TEMPLATE_PLACEHOLDERS["solution_template"]))
    feedback_template: str = setting(PRIVILEGED_DEFAULTS.feedback, contains(TEMPLATE_PLACEHOLDERS["feedback_template"]))
    feedback_prompt_template: str = setting(PRIVILEGED_DEFAULTS.feedback_prompt, contains(TEMPLATE_PLACEHOLDERS["feedback_prompt_template"]))


def templates_of(s: DictConfig) -> Templates:
    return Templates(s.teacher_template, s.solution_template, s.feedback_template, s.feedback_prompt_template)


def check_codistill_values(cfg: DictConfig) -> None:
    """What the fields' rules cannot say (they are checked with every field, on every run): the
    strong domains are names."""
    for peer, domain in cfg.codistill.strong_domain.items():
        check(f"codistill.strong_domain.{peer}", domain, nonempty("a domain name"))


def check_codistill(cfg: DictConfig) -> None:
    """What a co-distillation run needs besides valid values: two peers, each a model reference."""
    s = cfg.codistill
    if len(s.peers) != 2:
        raise fail("codistill.peers", s.peers, "exactly two peers, name -> model folder or lab:<artifact> reference")
    for name, ref in s.peers.items():
        check_ref(f"codistill.peers.{name}", ref, cfg, "a model folder or a lab:<artifact> reference")
    check_names("codistill.strong_domain", list(s.strong_domain), list(s.peers), source="codistill.peers", allow_empty=True)
