"""One definition per config value: a field's type, default and rule live in the schema
(``setting`` in mopdx.config / loss_config / codistill.settings / strategy configs); the
checks, ``config keys`` and the loss spec are derived from there."""

from __future__ import annotations

import dataclasses

import pytest
from omegaconf import DictConfig

from mopdx.cli import main
from mopdx.config import load_config
from mopdx.errors import ConfigError
from mopdx.loss_config import LossConfig
from mopdx.losses import LossSpec
from mopdx.rules import config_rows, field_rules

# scalar fields checked with the run rather than by a rule of their own: references (a folder, a
# lab: artifact, a data source), the loss kind (the rows of mopdx.losses.LOSSES, a torch module)
CHECKED_WITH_THE_RUN = {"strategy.name", "model.student", "data.train", "data.eval", "loss.kind"}


def _scalar_fields(node: DictConfig, prefix: str = "") -> list[str]:
    out = []
    for f in dataclasses.fields(node._metadata.object_type):
        child = node._get_node(f.name)
        if isinstance(child, DictConfig):
            if dataclasses.is_dataclass(child._metadata.object_type):
                out += _scalar_fields(child, f"{prefix}{f.name}.")
            continue
        if f.type in ("str", "int", "float", "bool", "float | None", "str | None", "int | None"):
            out.append(f"{prefix}{f.name}")
    return out


@pytest.mark.parametrize("strategy", ["mopd", "camopd", "cascade", "opcod"])
def test_every_scalar_field_carries_its_rule(strategy: str) -> None:
    cfg = load_config(strategy)
    ruled = {key for key, _, _ in field_rules(cfg)}
    missing = [k for k in _scalar_fields(cfg) if k not in ruled and k not in CHECKED_WITH_THE_RUN]
    assert not missing, f"fields without a rule in their setting(...): {missing}"


def test_the_loss_spec_takes_its_defaults_and_fields_from_the_loss_node() -> None:
    assert {f.name for f in dataclasses.fields(LossSpec)} <= {f.name for f in dataclasses.fields(LossConfig)}
    assert LossSpec.from_cfg(load_config("mopd", [], ["loss.kind=pg", "loss.adv_clip=5.0"]).loss) == LossSpec()
    spec = LossSpec.from_cfg(load_config("mopd", [], ["loss.kind=jsd", "loss.jsd_beta=0.25", "loss.average=token", "loss.is_clip=2"]).loss)
    assert (spec.kind, spec.jsd_beta, spec.average, spec.is_clip) == ("jsd", 0.25, "token", 2.0)


def test_a_bad_value_is_refused_with_its_fields_rule() -> None:
    rules = {key: rule for key, _, rule in field_rules(load_config("opcod"))}
    for key, bad in (("rollout.top_p", "0.0"), ("loss.average", "tok"), ("strategy.gate_min_pass", "2.0"), ("codistill.divergence", "kl")):
        with pytest.raises(ConfigError) as exc:
            load_config("opcod", [], [f"{key}={bad}"])
        assert str(exc.value) == f"{key}={bad} is invalid; allowed: {rules[key].allowed}"


def test_config_keys_lists_every_leaf_with_its_value_and_rule(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "keys", "--strategy", "camopd", "strategy.rho=0.25"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = list(config_rows(load_config("camopd", [], ["strategy.rho=0.25"])))
    assert len(lines) == len(rows) and all(line.split()[0] == key for line, (key, _, _) in zip(lines, rows))
    rho = next(line for line in lines if line.startswith("strategy.rho "))
    assert "0.25" in rho and "kept fraction of each batch" in rho
    assert any(line.startswith("lab.domains ") for line in lines)  # plug-in nodes too


@pytest.mark.parametrize(("strategy", "override"), [("mopd", "optim.lr=-1"), ("camopd", "strategy.rho=2"), ("opcod", "codistill.divergence=forward"),
                                                    ("mopd", "optim.lrr=1")])
def test_a_bad_value_is_refused_before_torch_is_imported(strategy: str, override: str) -> None:
    """The fast rejection: a typo or a bad value costs the config load, never a torch import (seconds)."""
    import subprocess
    import sys

    code = ("import sys\nfrom mopdx.config import load_config\nfrom mopdx.errors import ConfigError\n"
            f"try:\n    load_config({strategy!r}, [], [{override!r}])\nexcept ConfigError:\n    print('torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False", out
