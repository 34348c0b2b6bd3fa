"""``lab:<artifact>`` references: a real path for each, building what is missing.

The framework never calls this directly: the lab plug-in (``mopdx_lab.plugin``)
hands it to ``mopdx.plugins.resolve_ref``, which the run assembly consults.
"""

from __future__ import annotations

from omegaconf import DictConfig

from mopdx.errors import ConfigError
from mopdx_lab.config import CAMOPD_ARTIFACTS

LAB_PREFIX = "lab:"


def known_artifacts(lab: DictConfig) -> list[str]:
    opcod = ["opcod/base", "opcod/train", "opcod/eval", *(f"opcod/peer_{d}" for d in lab.opcod.domains)]
    panels = [f"{kind}/{prefix}_{d}" for kind, prefix in (("panel", "broad"), ("xtok", "teacher")) for d in lab.domains]
    blocks = ["blocks/student", *(f"blocks/teacher_{d}" for d in lab.domains)]
    return ["stage1", *[f"teacher/{d}" for d in lab.domains], "train", "eval", *CAMOPD_ARTIFACTS, *opcod, *panels, *blocks]


def check_ref(ref: str, lab: DictConfig) -> None:
    """Fail on an unknown artifact name without building anything (config validation)."""
    name = ref[len(LAB_PREFIX):]
    if name not in known_artifacts(lab):
        raise ConfigError(f"unknown lab artifact {ref!r}; known: {', '.join('lab:' + k for k in known_artifacts(lab))}")
    # The CaMOPD scenario draws its review domain itself when the lab lacks it; its general domains
    # come from Stage 1, so they must be lab domains.  The OPCoD scenario may draw one of its two
    # (``incrot`` on a lab of ``inc`` / ``rot``), but its peers start from Stage 1, which must know the other.
    kind = name.split("/")[0]
    scenario = {"camopd": list(lab.camopd.recovery_domains), "opcod": list(lab.opcod.domains)}.get(kind)
    missing = [d for d in scenario or [] if d not in lab.domains]
    if missing and (kind == "camopd" or len(missing) == len(scenario)):  # here, not in the builder: resolving builds the lab first
        raise ConfigError(f"{ref} needs lab domains {', '.join(missing)}, which lab.domains={list(lab.domains)} lacks: "
                          f"add them to lab.domains or change lab.{kind}'s domains")


def resolve_ref(ref: str, lab: DictConfig, progress: bool = True) -> str:
    """Turn ``lab:<artifact>`` into a real path (building the lab if needed); pass paths through."""
    if not ref.startswith(LAB_PREFIX):
        return ref
    check_ref(ref, lab)
    # Imported here, not at the top: the builders pull in torch, transformers and the trainer,
    # and ``check_ref`` runs during config validation, which must answer in a second or two.
    from mopdx_lab.blocks import build_blocks
    from mopdx_lab.build import build_lab
    from mopdx_lab.camopd import build_camopd, camopd_path
    from mopdx_lab.opcod import build_opcod, opcod_path
    from mopdx_lab.panel import build_panel
    from mopdx_lab.xtok import build_xtok

    name = ref[len(LAB_PREFIX):]
    root = build_lab(lab, progress=progress)
    if name in ("train", "eval"):
        return str(root / "data" / f"{name}.jsonl")
    if name in CAMOPD_ARTIFACTS:
        return str(camopd_path(build_camopd(lab, root, progress=progress), name))
    if name.startswith("opcod/"):
        return str(opcod_path(build_opcod(lab, root), name))
    scenarios = {"panel": build_panel, "xtok": build_xtok, "blocks": build_blocks}  # <kind>/<model>: a model folder in the scenario's folder
    kind, _, model = name.partition("/")
    if kind in scenarios:
        return str(scenarios[kind](lab, root, progress=progress) / model)
    return str(root / "models" / name)
