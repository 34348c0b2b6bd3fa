"""The lab's settings: the ``lab`` node of a run config (added by the lab plug-in).

Why here and not in ``mopdx/config.py``: the framework's schema knows nothing
of the lab; ``mopdx.plugins`` merges this node in when the lab is installed.
Every field is part of the lab's cache key (``lab_dir``), except the scenario
nodes, which key their own folders.  ``check_lab`` validates the node (the
plug-in's ``check_config`` hook): building the lab takes minutes, so a bad
value must fail at config load, before anything is built.  This module stays
free of torch/transformers imports for the same reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import DictConfig

from mopdx.codistill.settings import TEMPLATE_PLACEHOLDERS
from mopdx.config_checks import check_names
from mopdx.rules import BOOL, POSITIVE_INT, SEED, Rule, check, check_fields, contains, fail, nonempty, number, one_of
from mopdx_lab.domains import DOMAINS, StepTrace, get_domain

# Lab v2's default domains: long step traces over one digit alphabet (mopdx_lab/domains.py,
# StepTrace). Not `dec` as well: inc and dec differ only in the sign of the rule, and a Stage 1
# on all three was still at 0 on both after 800 steps. Lab v1's short-answer add/reverse/sort
# stay available (the CaMOPD / OPCoD scenarios still use them: configs/strategy/camopd.yaml, opcod.yaml).
LAB_DOMAINS = ["inc", "rot"]
CAMOPD_ARTIFACTS = ("camopd/general", "camopd/specialist", "camopd/train", "camopd/eval")  # built by mopdx_lab/camopd.py
# Byte-level BPE (mopdx_lab/tokenizer.py): 256 byte symbols and 3 special tokens come
# before any merge, so a smaller vocab_size would be silently exceeded.
MIN_VOCAB = 256 + 3
LR = number(0, lo_open=True)


@dataclass
class TinyModelSpec:
    """Shape of a lab model (defaults: ~1M parameters, < 5 ms per forward); built by mopdx_lab/model_factory.py."""

    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 384
    max_position_embeddings: int = 128
    lm_head_std: float = 0.002


CAMOPD_PROXIES = ("all", "easy", "hard")  # lab.camopd.proxy: which general prompts recovery trains on (mopdx_lab/camopd.py)


@dataclass
class CaMOPDLabConfig:
    """The CaMOPD scenario (mopdx_lab/camopd.py): a general model, then a specialist whose rule overwrites a general one."""

    recovery_domains: list[str] = field(default_factory=lambda: ["inc", "rot"])  # lab domains: the general sub-skills
    review_domain: str = "rotp"  # any lab domain; drawn by the scenario when not in lab.domains
    general_method: str = "rft"  # the general model from Stage 1: rft (its own verified samples) | sft (references, lab v1)
    general_steps: int = 80
    general_lr: float = 1e-3
    general_prompts: int = 512  # rft: prompts sampled
    general_group: int = 8  # rft: samples per prompt
    specialise_steps: int = 300
    specialise_lr: float = 1e-3
    # shares of the specialist's training data replayed from general domains: inc at 0.25 is kept, rot at
    # 0.01 leaks: the specialist writes rotp's `|` on some of rot's separators (rot 0.98 -> 0.86)
    replay: dict[str, float] = field(default_factory=lambda: {"inc": 0.25, "rot": 0.01})
    review_train: int = 4000  # review-domain training prompts drawn when it is not a lab domain
    # recovery prompts: all | easy (Domain.is_easy) | hard (the rest) -- easy and hard are other input
    # distributions than the general model's, as the paper's proxies are, but their pre-flight did not
    # pass (mean cos +0.002 / -0.040; all: -0.153; README, "CaMOPD")
    proxy: str = "all"
    # how the recovery prompts are written: "" (as their domain writes them, "rot: 5281") or a template
    # with {tag} and {input}, e.g. "{tag}> {input}": another template than the general teacher's (the
    # paper's other kind of proxy); evaluation keeps the domains' own. The general model answers both
    # "{tag}> {input}" and "{tag} {input}" about as well as its own, 3- or 5-digit inputs not at all;
    # the pre-flight passed with "{tag} {input}" (-0.186) and not with "{tag}> {input}" (-0.024)
    proxy_template: str = ""
    # the per-domain shares of every scenario run (data.domain_ratios in configs/experiment/camopd_lab.yaml):
    # recovery : review = 3 : 1 as CaMOPD's n_g = 3, and rot -- the leaking one -- a quarter of the recovery prompts
    mix: dict[str, float] = field(default_factory=lambda: {"inc": 2.25, "rot": 0.75, "rotp": 1.0})
    preflight_steps: int = 30  # mixed MOPD steps before the gradient check (0 = skip the check)
    # per group: 32 was sampling noise (split-half cosine of the recovery mean gradient 0.06-0.2;
    # the cosine on 32 prompts +0.05..+0.12 where 256 gave -0.04..-0.20 on the same checkpoints)
    preflight_prompts: int = 256
    preflight_max_cos: float = -0.1
    # the verdict's gradient estimator (analyze coherence --estimator): expected (each position's exact
    # next-token expectation of the PG term: the same expected update) | sampled (the sampled tokens;
    # a group's mean was carried by 1-5 slipped rollouts of 256). Both are measured and recorded.
    preflight_estimator: str = "expected"


@dataclass
class OPCoDLabConfig:
    """The OPCoD scenario (mopdx_lab/opcod.py): two peers, each specialised on one domain."""

    domains: list[str] = field(default_factory=lambda: ["reverse", "sort"])
    base_steps: int = 600
    base_lr: float = 2e-3
    specialise_steps: int = 100
    specialise_lr: float = 1e-3
    # share of each peer's specialisation mix that is plain examples of the other domain: with
    # lab v2's same-format rules, specialising on one alone takes the other to 0.00 within 20
    # steps, where OPCoD needs a weak peer that is weak, not blank (README, "OPCoD on lab v2")
    specialise_replay: float = 0.0
    # share of it that is *context* examples of the other domain (its solution and/or the anchored
    # worked steps, then the prompt): the peer learns to read a hint where it needs one, while no
    # plain example of that domain keeps it weak there (mopdx_lab/opcod.py, read_other_examples)
    specialise_read_other: float = 0.0
    # share of it that is the peer's own domain with a *wrong* hint (the other domain's worked
    # steps on the same start), answered by the peer's own rule: the peers mostly followed a wrong
    # hint on their strong domain (the pre-flight's fb_if_wrong); step-trace domains only
    # (mopdx_lab/opcod.py, wrong_hint_examples; README, "OPCoD on lab v2": it did not help)
    specialise_wrong_hints: float = 0.0
    # share of it that is *hint-writing* examples of the other domain (``hint <prompt>`` -> the
    # anchored worked steps): a peer otherwise writes hints only on its own domain, and its hint on
    # the other one followed its own rule even where all its rollouts passed (the pre-flight's fb_right;
    # README, "OPCoD on lab v2": the hints came right, and the weak peers stopped being weak)
    specialise_write_other: float = 0.0
    # share of it that is hint-writing examples of the peer's own domain whose hint is the *whole
    # answer*: givers that sometimes leak, so that the anchoring-off control has a leak to pass on
    # (mopdx_lab/opcod.py, leaky_hint_examples; runs then need codistill.feedback_max_tokens >= the answer)
    specialise_leaky_hints: float = 0.0
    # The peers learn to read contexts and write feedback in these formats; the OPCoD
    # strategy config points at them (configs/strategy/opcod.yaml). Short markers, not
    # DESIGN.md's English sentence: the lab tokenizer spells unknown words byte by byte,
    # which would make every teacher sequence ~4x longer on a CPU.
    # The pre-flight check (mopdx_lab/opcod_preflight.py): prompts per domain (0: skip it),
    # samples per prompt. Not part of the scenario's cache key: it measures, it builds nothing.
    preflight_prompts: int = 64
    preflight_samples: int = 4
    # the giver's share of passing rollouts for its feedback to count; the OPCoD strategy config
    # reads it (strategy.gate_min_pass: ${lab.opcod.gate_min_pass}), so the check measures the
    # run's own gate: set it here to change both
    gate_min_pass: float = 0.5
    # offset of the peers' specialisation seeds: another draw of the same recipe (its order of
    # examples), to see whether a verdict holds across builds; 0 keeps the recorded builds' folders
    specialise_seed: int = 0
    teacher_template: str = "{prompt}{solution}{feedback}"
    solution_template: str = "\n= {solution}"
    feedback_template: str = "\n# {feedback}"
    feedback_prompt_template: str = "hint {prompt}"


@dataclass
class PanelLabConfig:
    """Broad teachers for panels (mopdx_lab/panel.py): Stage 1 by RFT on a domain, stopped on a lower accuracy."""

    broad_accuracy: float = 0.8  # sampled accuracy on the check prompts at which a broad teacher stops (the sharp ones: lab.targets.specialist)
    steps: int = 60  # RFT SFT steps: a ceiling
    lr: float = 3e-4  # below lab.rft.lr, so the stop lands near broad_accuracy
    check_every: int = 5
    prompts: int = 256
    group: int = 8


@dataclass
class XTokLabConfig:
    """Teachers with another tokenizer (mopdx_lab/xtok.py): each domain teacher distilled onto a second BPE."""

    vocab_size: int = 512
    # training prompts the source teacher samples, and T = 1 samples per prompt (all kept: its distribution,
    # not the verifier's). 512 x 4 was memorised (loss ~1e-3 by step 300, 19 passes in 600 steps): rot's
    # teacher then stayed at a sampled 0.92-0.95 against a target of 0.959 and missed it at the ceiling
    prompts: int = 2048
    group: int = 2
    steps: int = 600  # SFT steps: a ceiling (inc at 512 x 4: within 0.02 of its source after 325)
    # 3e-4 was slower, not gentler: the copied rows score the second tokenizer's spellings badly
    # at first (loss ~9), and 3e-4 took 400 steps to a sampled 0.54 where 1e-3 reached 0.97
    lr: float = 1e-3
    check_every: int = 25
    tolerance: float = 0.02  # stop once within this of the source's sampled accuracy on the check prompts


@dataclass
class BlocksLabConfig:
    """Multi-turn models (mopdx_lab/blocks.py): the student and each domain teacher taught the lab_blocks episode format."""

    prompts: int = 1024  # training prompts the source samples (all domains for the student, its own for a teacher)
    group: int = 2  # T = 1 samples per prompt, all kept (right and wrong)
    steps: int = 400  # SFT steps: a ceiling
    lr: float = 1e-3
    check_every: int = 25
    formed: float = 0.95  # the student stops once this share of its check episodes are well formed (right or wrong)
    teacher_reward: float = 0.9  # a teacher stops once its episode reward on the check prompts reaches this
    max_tokens: int = 64  # the episode budget the models are measured under (the runs' env.max_tokens)


@dataclass
class RegimeConfig:
    """Bounds of the papers' regime the build checks (mopdx_lab/regime.py) and warns outside of."""

    kl_min: float = 0.02
    kl_max: float = 0.2
    min_gap: float = 0.15
    min_student: float = 0.2


@dataclass
class TargetsConfig:
    """The closed-loop build (mopdx_lab/stage1.py, mopdx_lab/stage2.py): each stage ends on what it is
    for, measured on held-out *check* prompts (``data/check.jsonl``, apart from train and eval),
    not on a step count.  Why: Stage 1 escapes a loss plateau at a step that is chaotic in float
    rounding (414 steps on one CPU, 691 on another, same config), so any fixed count or loss
    threshold builds another lab on another machine (issue 37).  The step budgets stay as
    ceilings: ``lab.stage1_steps``, ``lab.stage1_noise_steps``, ``lab.rft.rounds``.

    The targets are the regime's (``lab.regime``), stated before any build was measured: a
    student inside ``student_band`` (its floor above ``regime.min_student``, its top leaving room
    for a teacher ``regime.min_gap`` above it), and teachers inside the regime's gap and KL."""

    check_every: int = 50  # Stage-1 steps between measurements; 0 = the open-loop build (fixed budgets, the tests' tiny labs)
    check_prompts: int = 128  # held-out prompts per domain the checks measure on
    check_samples: int = 4  # T = 1 samples per prompt for the sampled checks (student band, teacher gap)
    learned: float = 0.9  # clean phase: every domain's *greedy* accuracy >= this (the step rule is learned)
    # noisy phase: every domain's sampled accuracy sits inside -- at two checks in a row, or at the phase's end (mopdx_lab/stage1.py)
    student_band: list[float] = field(default_factory=lambda: [0.3, 0.6])
    # Stage 2: an RFT round ends once its specialist is one -- sampled accuracy >= this on the check
    # prompts, inside the regime's gap and KL -- measured every ``specialist_every`` SFT steps (0: the
    # whole round).  Why: past that point the round only sharpens the teacher away from the student
    # (its loss is ~0 within ~15 of 60 steps), and a teacher built to the round's end sat at the KL
    # bound (0.205 > 0.2 on one CPU's build, 0.163 on its check prompts), so the regime held on one
    # machine and not on the next; stopping where the specialist is made leaves room inside the band.
    specialist: float = 0.95
    specialist_every: int = 10


@dataclass
class RFTLabConfig:
    """Stage 2 by rejection-sampling fine-tuning (``lab.stage2_method=rft``, mopdx_lab/rft.py)."""

    # sample -> keep verified -> fine-tune, repeated (expert iteration); a ceiling in the closed-loop
    # build, which stops after the first round whose teacher meets the regime (lab.targets)
    rounds: int = 3
    prompts: int = 256  # training prompts sampled per round
    group: int = 8  # T = 1 samples per prompt
    steps: int = 60  # SFT steps per round
    lr: float = 1e-3


@dataclass
class LabConfig:
    root: str = "artifacts/lab"
    domains: list[str] = field(default_factory=lambda: list(LAB_DOMAINS))
    seed: int = 0
    vocab_size: int = 512
    n_train: int = 20000  # per domain (capped by how many distinct prompts exist)
    n_eval: int = 200  # held-out, per domain
    model: TinyModelSpec = field(default_factory=TinyModelSpec)
    # torch threads while building: float sums depend on the thread count, and a tiny model's
    # training amplifies such differences, so the build pins it to get one lab per config on
    # every machine (0 = leave torch's default, machine-dependent). Part of the lab's key: a build
    # that differs from a built lab only here says so before it starts (build.threads_note).
    threads: int = 2
    max_new_tokens: int = 56  # step traces: 49 tokens + EOS (lab v1's add/reverse/sort need 16)
    # Stage 1's clean phase: at most stage1_steps, until every domain's greedy accuracy reaches
    # lab.targets.learned (closed loop); then at most stage1_noise_steps on noisy answers, until every
    # domain's sampled accuracy is inside lab.targets.student_band. With lab.targets.check_every=0 (open
    # loop) the clean phase stops when the mean loss of 20 steps is below stage1_stop_loss (0 = never)
    # and the noisy phase runs all its steps: the build before issue 37, under the same lab hash.
    stage1_steps: int = 2000
    stage1_stop_loss: float = 0.05
    # true: the generalist sees only each domain's easy part (Domain.is_easy). The lab v1
    # default; with SFT specialists on the rest it put teachers 4-7 nats from the student.
    stage1_easy_only: bool = False
    stage1_lr: float = 3e-3
    # fraction of Stage-1 answers with one slip (Domain.corrupt): keeps the generalist a diffuse,
    # erring sampler whatever its length, for its teachers to sharpen (mopdx_lab/stage1.py, noisy_answers)
    stage1_noise: float = 0.5
    # Stage-1 steps on the noisy answers, after the clean phase: its lr schedule's length, and a ceiling when closed-loop
    stage1_noise_steps: int = 300
    # Stage 2: each specialist is Stage 1 trained with verifier rewards on its own domain, so the
    # teachers sharpen what the student can already do and stay close to it (same origin):
    # rft = rejection-sampling fine-tuning on Stage 1's own verified samples (lab.rft; why it is
    # the default: mopdx_lab/rft.py), rl = GRPO through the framework's PG loss
    # (loss.teacher_weight=0; stage2_steps/lr/prompts/group), sft = lab v1's SFT on references.
    stage2_method: str = "rft"
    stage2_steps: int = 60
    stage2_lr: float = 3e-4
    stage2_prompts: int = 16  # prompts per RL step
    stage2_group: int = 8  # GRPO samples per prompt
    batch_size: int = 64  # Stage 1 SFT
    rft: RFTLabConfig = field(default_factory=RFTLabConfig)
    regime: RegimeConfig = field(default_factory=RegimeConfig)
    targets: TargetsConfig = field(default_factory=TargetsConfig)
    # a build that misses a target (or the regime) stops with one line and a non-zero exit; true builds
    # on and only warns (experiments on a lab outside the regime, on purpose). Not part of the lab's key.
    allow_outside_regime: bool = False
    camopd: CaMOPDLabConfig = field(default_factory=CaMOPDLabConfig)
    opcod: OPCoDLabConfig = field(default_factory=OPCoDLabConfig)
    panel: PanelLabConfig = field(default_factory=PanelLabConfig)
    xtok: XTokLabConfig = field(default_factory=XTokLabConfig)
    blocks: BlocksLabConfig = field(default_factory=BlocksLabConfig)


def _proxy_template_ok(v: object) -> bool:
    """``lab.camopd.proxy_template``: empty, or a template naming {tag} and {input} and nothing else."""
    if v == "":
        return True
    if not isinstance(v, str) or "{tag}" not in v or "{input}" not in v:
        return False
    try:
        v.format(tag="t", input="i")
    except (KeyError, IndexError, ValueError):
        return False
    return True


def check_targets(lab: DictConfig, key: str = "lab") -> None:
    """``lab.targets``: a band inside [0, 1] whose floor is at least the regime's student floor and whose
    top leaves a teacher room for the regime's gap -- a band the regime itself would reject can never pass."""
    t = lab.targets
    check_fields(t, f"{key}.targets", {
        "check_every": number(0, integer=True, note="0 = open loop: fixed budgets"), "check_prompts": POSITIVE_INT,
        "check_samples": POSITIVE_INT, "learned": number(0, 1, lo_open=True),
        "specialist": number(0, 1, lo_open=True), "specialist_every": number(0, integer=True, note="0 = the whole round"),
    })
    band = list(t.student_band)
    if len(band) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in band) or not 0 <= band[0] < band[1] <= 1:
        raise fail(f"{key}.targets.student_band", band, "[lo, hi] with 0 <= lo < hi <= 1")
    if band[0] < lab.regime.min_student:
        raise fail(f"{key}.targets.student_band", band, f"a floor >= {key}.regime.min_student={lab.regime.min_student}")
    if band[1] + lab.regime.min_gap > 1:
        raise fail(f"{key}.targets.student_band", band, f"a top <= {1 - lab.regime.min_gap:g} (1 - {key}.regime.min_gap), so a teacher can be that far above it")


def check_lab(lab: DictConfig, key: str = "lab") -> None:
    """Raise ``ConfigError`` (one line naming ``<key>.<field>``) for a value the lab cannot build with."""
    check(f"{key}.root", lab.root, nonempty("a non-empty folder path"))
    check_names(f"{key}.domains", lab.domains, sorted(DOMAINS), source="the lab's domains")
    check_fields(lab, key, {
        "seed": SEED, "vocab_size": number(MIN_VOCAB, integer=True, note="byte alphabet + special tokens"),
        "n_train": POSITIVE_INT, "n_eval": POSITIVE_INT, "batch_size": POSITIVE_INT,
        "stage1_steps": POSITIVE_INT, "stage1_easy_only": BOOL, "stage1_lr": LR, "stage1_noise": number(0, 1), "stage1_noise_steps": number(0, integer=True), "stage1_stop_loss": number(0), "stage2_steps": POSITIVE_INT, "stage2_lr": LR,
        "threads": number(0, integer=True, note="0 = leave as is"), "max_new_tokens": POSITIVE_INT,
        "stage2_prompts": POSITIVE_INT, "stage2_method": one_of("rft", "rl", "sft"), "stage2_group": number(2, integer=True, note="GRPO needs at least 2 samples per prompt"),
    })
    check_fields(lab.rft, f"{key}.rft", {
        "rounds": POSITIVE_INT, "prompts": POSITIVE_INT, "group": POSITIVE_INT, "steps": POSITIVE_INT, "lr": LR,
    })
    check_fields(lab.regime, f"{key}.regime", {
        "kl_min": number(0), "kl_max": number(0), "min_gap": number(-1, 1), "min_student": number(0, 1),
    })
    if lab.regime.kl_min > lab.regime.kl_max:
        raise fail(f"{key}.regime.kl_min", lab.regime.kl_min, f"<= {key}.regime.kl_max={lab.regime.kl_max}")
    check(f"{key}.allow_outside_regime", lab.allow_outside_regime, BOOL)
    check_targets(lab, key)
    m = lab.model
    check_fields(m, f"{key}.model", {
        "hidden_size": POSITIVE_INT, "num_layers": POSITIVE_INT, "num_heads": POSITIVE_INT, "num_kv_heads": POSITIVE_INT,
        "intermediate_size": POSITIVE_INT, "max_position_embeddings": POSITIVE_INT, "lm_head_std": number(0),
    })
    if m.hidden_size % m.num_heads or (m.hidden_size // m.num_heads) % 2:
        raise fail(f"{key}.model.num_heads", m.num_heads,
                   f"a divisor of {key}.model.hidden_size={m.hidden_size} that leaves an even head size (rotary embeddings)")
    if m.num_heads % m.num_kv_heads:
        raise fail(f"{key}.model.num_kv_heads", m.num_kv_heads, f"a divisor of {key}.model.num_heads={m.num_heads}")

    # The scenarios name domains of their own (lab v1's until issues 16/17 move them to lab v2), so
    # they are checked against the known domains here and against lab.domains when they are built
    # (mopdx_lab/camopd.py, opcod.py): a main-lab config must not fail on a scenario it never builds.
    c = lab.camopd
    check_names(f"{key}.camopd.recovery_domains", c.recovery_domains, sorted(DOMAINS), source="the lab's domains")
    rest = [d for d in sorted(DOMAINS) if d not in c.recovery_domains]
    check(f"{key}.camopd.review_domain", c.review_domain,
          Rule(lambda v: v in rest, f"one of {', '.join(rest) or '(none)'} (a lab domain not in {key}.camopd.recovery_domains)"))
    for d, share in c.replay.items():
        check(f"{key}.camopd.replay.{d}", share, number(0, 1, hi_open=True))
    check_names(f"{key}.camopd.replay", list(c.replay), list(c.recovery_domains), source=f"{key}.camopd.recovery_domains", allow_empty=True)
    if sum(c.replay.values()) >= 1:
        raise fail(f"{key}.camopd.replay", dict(c.replay), "shares summing to less than 1 (the rest is the review domain)")
    check_fields(c, f"{key}.camopd", {
        "general_method": one_of("rft", "sft"), "general_steps": POSITIVE_INT, "general_lr": LR, "general_prompts": POSITIVE_INT,
        "general_group": POSITIVE_INT, "specialise_steps": POSITIVE_INT, "specialise_lr": LR,
        "review_train": POSITIVE_INT, "proxy": one_of(*CAMOPD_PROXIES), "preflight_estimator": one_of("expected", "sampled"),
        "proxy_template": Rule(_proxy_template_ok, "'' (the domain's own prompts) or a template with {tag} and {input} and no other field"),
        "preflight_steps": number(0, integer=True, note="0 = no check"), "preflight_prompts": number(2, integer=True), "preflight_max_cos": number(-1, 1),
    })
    for d, share in c.mix.items():  # which domains: checked as data.domain_ratios by the runs that train with it
        check(f"{key}.camopd.mix.{d}", share, number(0))

    check_fields(lab.panel, f"{key}.panel", {"broad_accuracy": number(0, 1, lo_open=True), "steps": POSITIVE_INT, "lr": LR,
                                            "check_every": POSITIVE_INT, "prompts": POSITIVE_INT, "group": POSITIVE_INT})
    check_fields(lab.xtok, f"{key}.xtok", {"vocab_size": number(MIN_VOCAB, integer=True, note="byte alphabet + special tokens"),
                                          "prompts": POSITIVE_INT, "group": POSITIVE_INT, "steps": POSITIVE_INT, "lr": LR,
                                          "check_every": POSITIVE_INT, "tolerance": number(0, 1)})
    check_fields(lab.blocks, f"{key}.blocks", {"prompts": POSITIVE_INT, "group": POSITIVE_INT, "steps": POSITIVE_INT, "lr": LR,
                                            "check_every": POSITIVE_INT, "formed": number(0, 1), "teacher_reward": number(0, 1),
                                            "max_tokens": POSITIVE_INT})

    o = lab.opcod
    check_names(f"{key}.opcod.domains", o.domains, sorted(DOMAINS), source="the lab's domains")
    if len(o.domains) != 2:
        raise fail(f"{key}.opcod.domains", o.domains, "exactly two distinct lab domains (one per peer)")
    check_fields(o, f"{key}.opcod", {"base_steps": POSITIVE_INT, "base_lr": LR, "specialise_steps": POSITIVE_INT, "specialise_lr": LR,
                                     "specialise_replay": number(0, 1, hi_open=True), "specialise_read_other": number(0, 1, hi_open=True),
                                     "specialise_wrong_hints": number(0, 1, hi_open=True), "specialise_seed": SEED,
                                     "specialise_write_other": number(0, 1, hi_open=True), "specialise_leaky_hints": number(0, 1, hi_open=True),
                                     "gate_min_pass": number(0, 1, note="share of the giver's rollouts that must pass"),
                                     "preflight_prompts": number(0, integer=True), "preflight_samples": POSITIVE_INT,
                                     **{name: contains(ph) for name, ph in TEMPLATE_PLACEHOLDERS.items()}})
    if o.specialise_wrong_hints > 0 and not all(isinstance(get_domain(d), StepTrace) for d in o.domains):
        raise fail(f"{key}.opcod.specialise_wrong_hints", o.specialise_wrong_hints,
                   f"0 for {list(o.domains)}: a wrong hint is the other domain's steps on the same start, which needs two step-trace domains (inc, rot, incrot, ...)")
