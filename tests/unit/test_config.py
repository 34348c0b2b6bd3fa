"""Config merge order, validation and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from mopdx.config import load_config, to_yaml
from mopdx.errors import ConfigError


def test_defaults_and_base_yaml() -> None:
    cfg = load_config("mopd")
    assert cfg.strategy.name == "mopd"
    # the lab experiment (base.yaml) runs the paper's PG form, like the framework default,
    # and is scored by sampled evaluation (avg@8 at T = 1) long enough for its answers
    assert cfg.loss.kind == "pg" and cfg.loss.adv_clip == 5.0 and cfg.loss.teacher_weight == 1.0 and cfg.loss.reward_weight == 0.0
    assert (cfg.eval.greedy, cfg.eval.samples, cfg.eval.temperature) == (False, 8, 1.0)
    from mopdx.config import Config

    assert Config().loss.kind == "pg"
    assert dict(cfg.model.teachers) == {d: f"lab:teacher/{d}" for d in ("inc", "rot")}  # lab v2's domains


def test_wildcard_teacher_follows_lab_domains_and_explicit_entries_win() -> None:
    cfg = load_config("mopd", [], ["lab.domains=[add,sort]", "model.teachers.sort=/ckpt/sorter"])
    assert dict(cfg.model.teachers) == {"add": "lab:teacher/add", "sort": "/ckpt/sorter"}
    with pytest.raises(ConfigError, match=r"model.teachers.\*=.*plug-in reference containing \{domain\}"):
        load_config("mopd", [], ["model.teachers.*=/ckpt/{domain}"])
    with pytest.raises(ConfigError, match=r"model.teachers.\*"):
        load_config("mopd", [], ["model.teachers.*=lab:stage1"])


def test_wildcard_panel_gives_every_domain_the_panel(tmp_path: Path) -> None:
    f = tmp_path / "panel.yaml"
    f.write_text('model:\n  teachers:\n    "*": {sharp: "lab:teacher/{domain}", broad: "lab:panel/broad_{domain}"}\n')
    cfg = load_config("mopd", [f], ["lab.domains=[add,sort]", "model.teachers.sort=/ckpt/sorter"])
    assert {d: (dict(t) if not isinstance(t, str) else t) for d, t in cfg.model.teachers.items()} == {
        "add": {"sharp": "lab:teacher/add", "broad": "lab:panel/broad_add"}, "sort": "/ckpt/sorter"}
    f.write_text('model:\n  teachers:\n    "*": {sharp: "lab:teacher/{domain}", broad: "/ckpt/general"}\n')
    with pytest.raises(ConfigError, match=r"model.teachers.\*=.*or a panel of them"):
        load_config("mopd", [f], [])
    f.write_text('model:\n  teachers:\n    "*": {sharp: "lab:teacher/{domain}", broad: "lab:no/such_{domain}"}\n')
    with pytest.raises(ConfigError, match="unknown lab artifact 'lab:no/such_inc'"):
        load_config("mopd", [f], [])


def test_merge_order_file_then_overrides(tmp_path: Path) -> None:
    f1, f2 = tmp_path / "a.yaml", tmp_path / "b.yaml"
    f1.write_text("optim:\n  lr: 0.5\ntrain:\n  max_steps: 7\n")
    f2.write_text("optim:\n  lr: 0.25\n")
    cfg = load_config("mopd", [f1, f2], ["train.max_steps=9"])
    assert cfg.optim.lr == 0.25  # later file wins
    assert cfg.train.max_steps == 9  # override wins over files


def test_unknown_key_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"optim\.lrr"):
        load_config("mopd", [], ["optim.lrr=0.1"])
    f = tmp_path / "typo.yaml"
    f.write_text("trian:\n  max_steps: 3\n")
    with pytest.raises(ConfigError, match="trian"):
        load_config("mopd", [f])


def test_wrong_type_names_the_key() -> None:
    with pytest.raises(ConfigError, match="train.max_steps"):
        load_config("mopd", [], ["train.max_steps=lots"])


def test_value_checks() -> None:
    with pytest.raises(ConfigError, match="loss.kind"):
        load_config("mopd", [], ["loss.kind=mse"])
    with pytest.raises(ConfigError, match="rollout.n"):
        load_config("mopd", [], ["rollout.n=0"])


def test_unknown_strategy_lists_known() -> None:
    with pytest.raises(ConfigError, match="known strategies: .*mopd"):
        load_config("nope")


def test_strategy_by_module_path() -> None:
    cfg = load_config("mopdx_strategies.mopd:MOPDStrategy")
    assert cfg.strategy.name == "mopdx_strategies.mopd:MOPDStrategy"


def test_strategy_name_from_config_file(tmp_path: Path) -> None:
    f = tmp_path / "s.yaml"
    f.write_text("strategy:\n  name: nope\n")
    with pytest.raises(ConfigError, match="nope"):
        load_config(None, [f])


def test_saved_config_reproduces(tmp_path: Path) -> None:
    cfg = load_config("mopd", [], ["optim.lr=0.003", "data.domain_ratios.inc=0.5", "data.domain_ratios.rot=0.5"])
    saved = tmp_path / "config.yaml"
    saved.write_text(to_yaml(cfg))
    again = load_config(None, [saved])
    assert OmegaConf.to_container(again, resolve=True) == OmegaConf.to_container(cfg, resolve=True)


def test_bad_override_syntax() -> None:
    with pytest.raises(ConfigError, match="key=value"):
        load_config("mopd", [], ["optim.lr"])


def test_a_scenario_needing_domains_the_lab_lacks_fails_at_load_before_any_build(tmp_path: Path) -> None:
    cases = (("camopd", "lab:camopd/", "[add,sort]", "lab.domains=\\['add', 'sort'\\]"),
             ("opcod", "lab:opcod/", "[add,sort]", "lab.domains=\\['add', 'sort'\\]"))
    for strategy, ref, domains, named in cases:
        with pytest.raises(ConfigError, match=f"{ref}.*needs lab domains .*{named}") as exc:
            load_config(strategy, [], [f"lab.root={tmp_path / 'lab'}", f"lab.domains={domains}"])
        assert "\n" not in str(exc.value)
    # OPCoD may draw one of its two domains (lab v2: uprot next to the lab's rot), not both
    cfg = load_config("opcod", [Path(__file__).parents[2] / "configs" / "experiment" / "opcod_v2.yaml"], [f"lab.root={tmp_path / 'lab'}"])
    assert list(cfg.lab.opcod.domains) == ["uprot", "rot"] and cfg.data.eval == "lab:opcod/eval"
    assert not (tmp_path / "lab").exists()
