"""The closed-loop lab build: a stage stops on its measured target, and a missed one stops the build.

Issue 37: the build's stages end on what they are for, measured on held-out
check prompts, not on step counts; a target that cannot be reached stops the
build with one line and a non-zero exit before any method runs.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from mopdx.config import load_config
from mopdx.data import Example
from mopdx.errors import ConfigError
from mopdx_lab import domains as lab_domains
from mopdx_lab.build import build_lab, lab_dir
from mopdx_lab.stage2 import teacher_problem
from mopdx_lab.targets import Check, LabTargetMissed


class Constant(lab_domains.Domain):
    """A domain a one-layer model learns in a few dozen steps: every answer is ``78``; its slip
    (``Domain.corrupt``, two characters swapped) is ``87``, so noisy training makes a sampler
    that answers right about half the time -- inside the default band."""

    name = "const"

    def generate(self, rng: random.Random) -> Example:
        return Example(self.name, f"const: {rng.randrange(10_000):04d}", "78")


@pytest.fixture()
def const_domain(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(lab_domains.DOMAINS, "const", Constant)


def _const_lab(tmp_path: Path, *extra: str):
    return load_config("mopd", [], [
        f"lab.root={tmp_path}", "lab.domains=[const]", "lab.vocab_size=300", "lab.max_new_tokens=4", "lab.batch_size=16",
        "lab.model.hidden_size=64", "lab.model.num_layers=1", "lab.model.num_heads=2", "lab.model.num_kv_heads=1",
        "lab.model.intermediate_size=64", "lab.targets.check_every=10", "lab.targets.check_prompts=64", "lab.stage1_steps=300",
        "lab.stage1_noise_steps=300", *extra,
    ]).lab


def _train(lab):
    from mopdx_lab.model_factory import TinyModelSpec, build_tiny_qwen2
    from mopdx_lab.stage1 import train_stage1
    from mopdx_lab.tokenizer import build_tokenizer

    dom = Constant()
    train = lab_domains.make_split(dom, 400, seed=0)
    check = lab_domains.make_split(dom, 64, seed=1, exclude={e.prompt for e in train})
    tok = build_tokenizer([f"{e.prompt} {e.answer}" for e in train], vocab_size=300)
    model = build_tiny_qwen2(TinyModelSpec(**dict(lab.model)), tok, seed=0)
    return train_stage1(lab, model, tok, train, Check.of(lab, check))


@pytest.mark.slow
def test_each_stage1_phase_stops_on_the_first_check_that_meets_its_target(const_domain, tmp_path: Path) -> None:
    lab = _const_lab(tmp_path)
    info = _train(lab)
    assert info["targets"]["missed"] is None
    clean = [c for c in info["checks"] if c["phase"] == "clean"]
    noisy = [c for c in info["checks"] if c["phase"] == "noisy"]
    # it stopped on the first check whose greedy accuracy reached the target, well inside its budget
    assert clean[-1]["greedy"]["const"] >= 0.9 and all(c["greedy"]["const"] < 0.9 for c in clean[:-1])
    assert info["steps"] == clean[-1]["step"] == 10 * len(clean) < 300
    # ... and the noisy phase on the first check where the sampled accuracy sits in the band: inside
    # at this check and the one before
    lo, hi = lab.targets.student_band
    assert len(noisy) >= 2 and info["noisy_steps"] == noisy[-1]["step"] < 300
    inside = [lo <= c["sampled"]["const"] <= hi for c in noisy]
    assert inside[-1] and inside[-2] and not any(a and b for a, b in zip(inside[:-2], inside[1:-1]))
    assert noisy[-1]["settled"] and not any(c["settled"] for c in noisy[:-1])


def test_a_phase_that_spends_its_budget_records_the_line_to_fix_it(const_domain, tmp_path: Path) -> None:
    info = _train(_const_lab(tmp_path, "lab.stage1_steps=1", "lab.targets.check_every=1"))  # one warm-up step: nothing learned
    line = info["targets"]["missed"]
    assert line.startswith("Stage 1's clean phase used lab.stage1_steps=1 with greedy accuracy const 0.000 < lab.targets.learned=0.9")
    assert "raise lab.stage1_steps" in line
    assert "noisy_steps" not in info  # it stopped: the noisy phase of a generalist that missed is not trained


def test_the_open_loop_build_keeps_its_folder_and_ignores_the_targets(tmp_path: Path) -> None:
    """``lab.targets.check_every=0`` keys the lab as before issue 37 (no ``targets`` in the hash), so
    the labs built then keep their folders; a closed-loop lab is keyed by its targets."""
    def key(*over: str) -> str:
        return lab_dir(load_config("mopd", [], [f"lab.root={tmp_path}", *over]).lab).name

    assert key("lab.targets.check_every=0") == key("lab.targets.check_every=0", "lab.targets.learned=0.5")
    assert key() != key("lab.targets.learned=0.5") and key() != key("lab.targets.check_every=0")
    assert key() == key("lab.allow_outside_regime=true")  # whether a lab may be used is not what it is


def test_teacher_targets_are_the_regimes_and_say_what_to_change(tmp_path: Path) -> None:
    lab = load_config("mopd", [], [f"lab.root={tmp_path}"]).lab  # regime: KL in [0.02, 0.2], gap >= 0.15
    assert teacher_problem(lab, "rot", 1, 0.45, 0.99, 0.1) is None
    far = teacher_problem(lab, "rot", 1, 0.45, 0.99, 0.25)
    assert far.startswith("teacher/rot after 1 RFT round(s)") and "KL 0.250" in far and "lower lab.rft.steps" in far
    assert "raise lab.rft.rounds" in teacher_problem(lab, "rot", 1, 0.45, 0.55, 0.05)  # gap +0.10 < 0.15
    assert "raise lab.rft.rounds" in teacher_problem(lab, "rot", 1, 0.45, 0.99, 0.01)  # closer than kl_min


def test_a_built_lab_outside_the_regime_stops_unless_allowed(tiny_lab: Path, tiny_overrides: list[str]) -> None:
    """The tiny lab is outside the regime by design; without ``lab.allow_outside_regime`` it is refused
    (with one line naming the figures) every time it is asked for, and nothing is rebuilt."""
    manifest = json.loads((tiny_lab / "manifest.json").read_text())
    assert not manifest["regime"]["in_regime"]
    refused = load_config("mopd", [], [*tiny_overrides, "lab.allow_outside_regime=false"]).lab
    with pytest.raises(LabTargetMissed, match=r"^lab target missed: the built lab is outside the papers' regime \(add: ") as exc:
        build_lab(refused, progress=False)
    assert "\n" not in str(exc.value) and "lab.allow_outside_regime=true" in str(exc.value)
    assert json.loads((tiny_lab / "manifest.json").read_text()) == manifest


def test_a_band_the_regime_rejects_fails_at_config_load(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"lab.targets.student_band=\[0.1, 0.5\] is invalid; allowed: a floor >= lab.regime.min_student=0.2"):
        load_config("mopd", [], [f"lab.root={tmp_path}", "lab.targets.student_band=[0.1,0.5]"])


@pytest.mark.slow
def test_an_unreachable_target_fails_with_one_line_before_any_method_runs(tiny_overrides: list[str], tmp_path: Path) -> None:
    """Command 1 on a lab whose Stage 1 cannot reach its target in its budget: exit 2, one ``error:``
    line that names the target, the figure and what to change; the Stage-1 model is kept as
    ``stage1.missed``, and no training step of the method ran."""
    over = [o for o in tiny_overrides if not o.startswith(("lab.root=", "lab.targets.check_every=", "lab.allow_outside_regime="))]
    args = [*over, f"lab.root={tmp_path / 'lab'}", f"run.out_dir={tmp_path / 'runs'}", "lab.targets.check_every=2", "lab.stage1_steps=4",
            "lab.targets.learned=1.0", "lab.targets.check_prompts=4"]
    proc = subprocess.run([sys.executable, "-m", "mopdx", "fit", "--strategy", "mopd", "--quiet", *args], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "TQDM_DISABLE": "1"})
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-2000:]
    assert errors[0].startswith("error: lab target missed: Stage 1's clean phase used lab.stage1_steps=4 with greedy accuracy ")
    assert "raise lab.stage1_steps" in errors[0] and "lab.allow_outside_regime=true" in errors[0]
    (lab,) = (tmp_path / "lab").iterdir()
    assert (lab / "models" / "stage1.missed" / "model.safetensors").is_file() and not (lab / "models" / "stage1").exists()
    assert not list((tmp_path / "runs").glob("*/logs/metrics.csv")) and not list((tmp_path / "runs").glob("*/checkpoints/*"))


def test_measuring_the_kl_leaves_both_models_trainable(tiny_model_factory, tiny_tokenizer) -> None:
    """The Stage-2 loop measures its teacher's KL between RFT rounds and trains it on: the measurement
    must not leave it frozen (a scorer freezes its model), or the next round has nothing to train."""
    from mopdx_lab.regime import initial_kl

    student, teacher = tiny_model_factory(0), tiny_model_factory(1)
    teacher.requires_grad_(True)
    student.lm_head.requires_grad_(False)
    prompts = [Example("add", "add: 1 + 2", "3"), Example("add", "add: 4 + 5", "9")]
    assert initial_kl(student, teacher, tiny_tokenizer, prompts, max_new_tokens=4) == pytest.approx(initial_kl(student, teacher, tiny_tokenizer, prompts, 4))
    assert all(p.requires_grad for p in teacher.parameters())
    assert [p.requires_grad for p in student.parameters()].count(False) == sum(1 for _ in student.lm_head.parameters())


def test_an_rft_round_ends_where_its_specialist_is_made(monkeypatch: pytest.MonkeyPatch, tiny_model_factory, tiny_tokenizer) -> None:
    """Stage 2 asks every ``check_every`` SFT steps whether the round's specialist is made; the round
    stops at the first yes (its steps are a ceiling), then the round's own check runs."""
    from mopdx_lab import rft as rft_module

    examples = [Example("add", f"add: {i} + 1", str(i + 1)) for i in range(40)]
    monkeypatch.setattr(rft_module, "correct_samples", lambda model, tok, prompts, group, n, seed: (list(prompts), 1.0))
    steps = []
    monkeypatch.setattr(rft_module.SFTLoop, "step", lambda self, ex: steps.append(1) or 0.0)
    asked, rounds = [], []
    spec = rft_module.RFTSpec(rounds=2, prompts=16, group=2, steps=60, lr=1e-3, batch_size=4, max_new_tokens=4, seed=0)
    rft_module.rft(tiny_model_factory(), tiny_tokenizer, examples, spec, within_round=lambda s: asked.append(s) or s >= 30,
                   after_round=lambda r: rounds.append(r) or True, check_every=10)
    assert asked == [10, 20, 30] and len(steps) == 30 and rounds == [1]
    steps.clear()
    rft_module.rft(tiny_model_factory(), tiny_tokenizer, examples, spec, within_round=lambda s: False, after_round=lambda r: False, check_every=10)
    assert len(steps) == 2 * 60  # never made: every round runs to its ceiling


def test_the_specialist_target_is_checked_at_config_load(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="lab.targets.specialist"):
        load_config("mopd", [], [f"lab.root={tmp_path}", "lab.targets.specialist=1.5"])


def test_a_missed_target_built_on_is_warned_once_per_line(caplog) -> None:
    """Every model a run resolves rechecks its artifact; the user reads each miss once, and a miss
    without allow_outside_regime still stops every time."""
    from omegaconf import OmegaConf

    from mopdx_lab.targets import missed

    lab = OmegaConf.create({"allow_outside_regime": True})
    with caplog.at_level("WARNING", logger="mopdx"):
        for _ in range(3):
            missed(lab, "test: teacher 0.5 < 0.9 (warned once)")
        missed(lab, "test: another line")
    assert [r.getMessage().count("warned once") for r in caplog.records].count(1) == 1
    assert sum("another line" in r.getMessage() for r in caplog.records) == 1
    with pytest.raises(LabTargetMissed):
        missed(OmegaConf.create({"allow_outside_regime": False}), "test: teacher 0.5 < 0.9 (warned once)")
