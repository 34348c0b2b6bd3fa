"""CaMOPD: counteraction-aware MOPD (DESIGN.md, "CaMOPD").

Run: ``python -m mopdx fit --strategy camopd``.

Two ingredients, each switchable for ablations:

1. **Decoupled alternating updates** (``alternate``): ``n_g`` general-recovery
   steps on the recovery domains (routed to the general teacher), then one
   domain-review step on the review domains (routed to the domain teacher).
   No mixed batches.  With ``alternate=false`` every batch mixes both pools
   in the same ``n_g : 1`` proportion, so the ablation sees the same data.
   Within a pool, domains take the proportions of ``data.domain_ratios``
   (the scenario's ``lab.camopd.mix``), equal when it is empty.
2. **Gap-based selection** (``select``): keep the top ``rho`` of each batch
   by mean token gap -- ``|lt - ls|`` on recovery steps, ``max(lt - ls, 0)``
   on review steps (both configurable, as is the length normalisation
   ``gap_length``) -- using ``mopdx.selection``.

Controls (``selector``): ``random`` keeps a random subset of the same size,
``length_matched`` a random subset with the lengths gap selection picked.
Each step logs, per branch, the mean gap and length of all and of the kept
rollouts and the gap-length correlation (short rollouts have noisier means).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig

from mopdx.config_checks import check_names
from mopdx.rules import BOOL, number, one_of, setting
from mopdx.errors import ConfigError
from mopdx.selection import GAP_MODES, LENGTH_NORMS, SELECTORS, choose, length_correlation, sequence_gap
from mopdx.strategy import StepPlan, Strategy, StrategyConfig

if TYPE_CHECKING:  # config validation imports this module; torch would cost seconds there
    import torch

    from mopdx.backends.base import Rollouts, TeacherOutput

RECOVERY, REVIEW, MIXED = "recovery", "review", "mixed"


@dataclass
class CaMOPDConfig(StrategyConfig):
    name: str = "camopd"
    # the run's domains in two roles (no default: they are the run's own; the lab's scenario names its own)
    recovery_domains: list[str] = field(default_factory=list)  # general prompts -> general teacher
    review_domains: list[str] = field(default_factory=list)  # domain prompts -> domain teacher
    n_g: int = setting(3, number(1, integer=True, note="recovery steps per review step"))
    alternate: bool = setting(True, BOOL)
    select: bool = setting(True, BOOL)
    rho: float = setting(0.5, number(0, 1, lo_open=True, note="kept fraction of each batch"))  # assumed default; what sweeps explore
    recovery_gap: str = setting("abs", one_of(*GAP_MODES))
    review_gap: str = setting("positive", one_of(*GAP_MODES))
    gap_length: str = setting("mean", one_of(*LENGTH_NORMS))  # mean (the paper's) | sqrt | sum: mopdx.selection.LENGTH_NORMS
    selector: str = setting("gap", one_of(*SELECTORS))  # gap | random | length_matched (controls at the same rho)


class CaMOPDStrategy(Strategy):
    """Alternating general recovery / domain review with gap-based selection."""

    name = "camopd"
    Config = CaMOPDConfig

    @classmethod
    def check_config(cls, cfg: DictConfig) -> None:
        s = cfg.strategy
        teachers = list(cfg.model.teachers)
        check_names("strategy.recovery_domains", s.recovery_domains, teachers, source="domains with a model.teachers entry")
        rest = [d for d in teachers if d not in s.recovery_domains]
        check_names("strategy.review_domains", s.review_domains, rest, source="model.teachers domains not in strategy.recovery_domains")

    def __init__(self, cfg: DictConfig, domains: list[str]) -> None:
        super().__init__(cfg, domains)
        s = cfg.strategy
        self.recovery = list(s.recovery_domains)
        self.review = list(s.review_domains)
        missing = [d for d in self.recovery + self.review if d not in domains]
        if missing:
            raise ConfigError(f"strategy.recovery_domains / review_domains name domain(s) {missing} without training prompts; domains: {domains}")
        self.last: dict[str, float] = {}

    # ------------------------------------------------------------- schedule
    def phase(self, step: int) -> str:
        s = self.cfg.strategy
        if not s.alternate:
            return MIXED
        return RECOVERY if step % (s.n_g + 1) < s.n_g else REVIEW

    def _shares(self, domains: list[str], total: float) -> dict[str, float]:
        """``domains``' shares summing to ``total``: in the proportions of ``data.domain_ratios``
        when it names them (the scenario's mix, which a MOPD run on it trains with too), else equal."""
        given = dict(self.cfg.data.domain_ratios)
        raw = {d: float(given.get(d, 0.0)) for d in domains}
        if not sum(raw.values()):
            raw = dict.fromkeys(domains, 1.0)
        return {d: total * v / sum(raw.values()) for d, v in raw.items()}

    def plan(self, step: int) -> StepPlan:
        phase = self.phase(step)
        if phase == RECOVERY:
            return StepPlan(self._shares(self.recovery, 1.0), phase)
        if phase == REVIEW:
            return StepPlan(self._shares(self.review, 1.0), phase)
        n_g = self.cfg.strategy.n_g
        return StepPlan({**self._shares(self.recovery, float(n_g)), **self._shares(self.review, 1.0)}, phase)

    # ------------------------------------------------------------ selection
    def select(self, step: int, plan: StepPlan, rollouts: Rollouts, teacher: TeacherOutput) -> torch.Tensor:
        import torch

        s = self.cfg.strategy
        everyone = torch.arange(len(rollouts))
        if not s.select:
            self.last = {"kept_frac": 1.0}
            return everyone
        # The rollout log-probs are the current student's (on-policy sampling).
        groups = {RECOVERY: [i for i, d in enumerate(rollouts.domains) if d in self.recovery],
                  REVIEW: [i for i, d in enumerate(rollouts.domains) if d in self.review]}
        kept: list[int] = []
        stats: dict[str, float] = {}
        # the random controls draw from (seed, step): a resumed run draws what it would have
        generator = torch.Generator().manual_seed(int(self.cfg.train.seed) * 1_000_003 + step)
        for branch, idx in groups.items():
            if not idx:
                continue
            mode = s.recovery_gap if branch == RECOVERY else s.review_gap
            sub = torch.tensor(idx)
            mask = rollouts.completion_mask[sub]
            gaps = sequence_gap(teacher.logps[sub], rollouts.rollout_logps[sub], mask, mode, s.gap_length).cpu()
            lengths = mask.sum(-1).cpu()
            chosen = choose(s.selector, gaps, lengths, s.rho, generator)
            kept += sub[chosen].tolist()
            stats[f"{branch}_gap_all"] = gaps.mean().item()
            stats[f"{branch}_gap_selected"] = gaps[chosen].mean().item()
            stats[f"{branch}_len_all"] = lengths.double().mean().item()
            stats[f"{branch}_len_selected"] = lengths[chosen].double().mean().item()
            stats[f"{branch}_gap_len_corr"] = length_correlation(gaps, lengths)
        stats["kept_frac"] = len(kept) / max(1, len(rollouts))
        self.last = stats
        return torch.tensor(sorted(kept), dtype=torch.long)

    def metrics(self) -> dict[str, float]:
        return dict(self.last)

    # ---------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        # The schedule is a pure function of the step; what a resume must not change is n_g.
        return {"n_g": int(self.cfg.strategy.n_g)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state and state.get("n_g") not in (None, int(self.cfg.strategy.n_g)):
            raise ConfigError(
                f"checkpoint was trained with strategy.n_g={state['n_g']} but the config says {self.cfg.strategy.n_g}; "
                "resume with the same schedule"
            )
