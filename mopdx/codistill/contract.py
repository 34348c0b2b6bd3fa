"""The contract of a co-distillation strategy: which hooks the two-peer loop calls.

A co-distillation strategy (``loop = "codistill"``) is run by
``mopdx.codistill.module.CoDistillModule``.  Of the base ``Strategy`` hooks
the loop uses ``plan`` (the step's prompt pool), ``metrics``, ``state_dict``
and ``load_state_dict``; ``select`` is not called (every rollout of both peers
enters the loss).  On top, it calls the hooks below, which decide what the
privileged teacher context holds:

* ``gives_feedback(correct)`` -- may a peer give feedback on a prompt, given
  its own rollouts' verdicts there (cognizance gating)?
* ``clean_feedback(text, answer, verifier)`` -- the feedback to pass on and
  whether it leaked the answer (anchoring);
* ``uses_solution`` / ``uses_feedback`` -- which parts enter the context;
* ``teacher_context(prompt, solution, feedback)`` -- the teacher-side prompt
  (the plain prompt when the teacher is the other peer, one-way MOPD, or the
  peer strong at the prompt's domain, domain-routed MOPD);
* ``routes`` -- for domain-routed MOPD, which peer's initial weights teach each domain.

The loop's own settings (peers, divergence, teacher copy, templates) are the
fields of :class:`CoDistillConfig`, which a strategy's ``Config`` extends.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from omegaconf import DictConfig

from mopdx.codistill.privileged import FEEDBACK_SOURCES, PRIVILEGED_DEFAULTS, Templates, teacher_context
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
from mopdx.verifiers import Verifier
from mopdx.errors import ConfigError
from mopdx.strategy import Strategy, StrategyConfig

# strategy.divergence -> its row of the one loss table (mopdx.losses.LOSSES)
DIVERGENCE_LOSS = {"reverse_kl": "full_reverse_kl", "jsd": "jsd"}
DIVERGENCES = tuple(DIVERGENCE_LOSS)
# Which weights read the privileged context: the peer's current ones, an EMA of them, a
# copy refreshed every ``refresh_every`` steps, or -- two controls that read the plain
# prompt -- the other peer's initial weights (one-way MOPD), or on each domain the initial
# weights of the peer strong there (domain-routed MOPD: the two specialists as MOPD's
# teachers, the baseline a multi-teacher reader asks for first).
TEACHER_COPIES = ("current", "ema", "refreshed", "peer", "routed")
# the controls whose teacher is a frozen initial peer on the plain prompt (no context, no feedback)
PLAIN_TEACHERS = ("peer", "routed")
# Each context template and the placeholder it must contain (``Templates.check``); the lab's
# ``lab.opcod.*_template`` fields are checked against the same table.
TEMPLATE_PLACEHOLDERS = {"teacher_template": "{prompt}", "solution_template": "{solution}",
                         "feedback_template": "{feedback}", "feedback_prompt_template": "{prompt}"}


@dataclass
class CoDistillConfig(StrategyConfig):
    """Settings of the co-distillation loop (the ``strategy`` node of co-distillation strategies)."""

    peers: dict[str, str] = field(default_factory=dict)  # name -> model folder or reference; exactly two
    strong_domain: dict[str, str] = field(default_factory=dict)  # the report's roles; teacher=routed's routes
    feedback_max_tokens: int = 16
    divergence: str = "reverse_kl"  # reverse_kl | jsd
    jsd_alpha: float = 0.5
    teacher: str = "current"  # current | ema | refreshed | peer | routed (TEACHER_COPIES)
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


class CoDistillStrategy(Strategy):
    """Base of co-distillation strategies: feedback always given and passed on as written."""

    loop = "codistill"
    Config = CoDistillConfig
    uses_solution = True
    uses_feedback = True

    @classmethod
    def check_config(cls, cfg: DictConfig) -> None:
        """The loop's own settings; a subclass adds its fields after calling this."""
        s = cfg.strategy
        if cfg.rollout.backend != "hf":
            raise fail("rollout.backend", cfg.rollout.backend, "hf (the co-distillation loop samples with the hf backend only)")
        if len(s.peers) != 2:
            raise fail("strategy.peers", s.peers, "exactly two peers, name -> model folder or lab:<artifact> reference")
        for name, ref in s.peers.items():
            check_ref(f"strategy.peers.{name}", ref, cfg, "a model folder or a lab:<artifact> reference")
        check_names("strategy.strong_domain", list(s.strong_domain), list(s.peers), source="strategy.peers", allow_empty=True)
        check_fields(s, "strategy", {
            "feedback_max_tokens": POSITIVE_INT, "divergence": one_of(*DIVERGENCES), "jsd_alpha": PROBABILITY_OPEN,
            "teacher": one_of(*TEACHER_COPIES), "ema_decay": number(0, 1, hi_open=True), "measure_flips": BOOL,
            "refresh_every": POSITIVE_INT, "feedback_source": one_of(*FEEDBACK_SOURCES), "measure_teacher": BOOL,
            **{name: contains(ph) for name, ph in TEMPLATE_PLACEHOLDERS.items()},
        })
        for peer, domain in s.strong_domain.items():
            check(f"strategy.strong_domain.{peer}", domain, nonempty("a domain name"))
        if s.teacher == "routed" and (set(s.strong_domain) != set(s.peers) or len(set(s.strong_domain.values())) != 2):
            raise fail("strategy.strong_domain", dict(s.strong_domain),
                       "each peer's strong domain, two different ones (strategy.teacher=routed sends each domain to the peer strong at it)")

    def __init__(self, cfg: DictConfig, domains: list[str]) -> None:
        super().__init__(cfg, domains)
        self.templates = templates_of(cfg.strategy)
        self.routes: dict[str, str] | None = None
        if cfg.strategy.teacher == "routed":
            self.routes = {d: p for p, d in cfg.strategy.strong_domain.items()}
            unrouted = sorted(set(domains) - set(self.routes))
            if unrouted:
                raise ConfigError(f"strategy.teacher=routed: no peer is strong at domain(s) {unrouted} (strategy.strong_domain = "
                                  f"{dict(cfg.strategy.strong_domain)}); name the peer that teaches each of the scenario's domains {sorted(domains)}")

    def gives_feedback(self, correct: Sequence[bool]) -> bool:
        """Whether a peer whose rollouts on a prompt scored ``correct`` may give feedback on it."""
        return True

    def clean_feedback(self, text: str, answer: str, verifier: Verifier) -> tuple[str, bool]:
        """The feedback to pass on (empty: drop it) and whether it leaked the answer."""
        return text, False

    @property
    def reads_context(self) -> bool:
        """False for the MOPD controls (one-way, domain-routed): a frozen peer teaches on the plain prompt."""
        return self.cfg.strategy.teacher not in PLAIN_TEACHERS

    def teacher_context(self, prompt: str, solution: str | None, feedback: str | None) -> str:
        """The teacher-side prompt: the plain prompt plus whatever privileged parts exist."""
        if not self.reads_context:
            return prompt
        return teacher_context(prompt, solution if self.uses_solution else None, feedback if self.uses_feedback else None, self.templates)
