"""notebooks/gradient_coherence.ipynb executes on tiny runs and draws its figures."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_gradient_coherence_notebook_executes(camopd_overrides, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import nbformat
    from nbclient import NotebookClient

    from mopdx.config import load_config
    from mopdx.run.fit import fit

    nb_path = ROOT / "notebooks" / "gradient_coherence.ipynb"
    nb = nbformat.read(nb_path, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit the notebook with outputs stripped"
    common = [*camopd_overrides, f"run.out_dir={tmp_path}",
              "train.keep_checkpoints=true", "train.ckpt_every=2", "train.eval_every=0"]
    runs = {s: fit(load_config(s, [ROOT / "configs" / "experiment" / "camopd_lab.yaml"], [*common, f"run.name={s}"]), progress=False)["run_dir"] for s in ("mopd", "camopd")}
    monkeypatch.setenv("MOPDX_COHERENCE_RUNS", json.dumps(runs))
    monkeypatch.setenv("MOPDX_COHERENCE_PROMPTS", "3")
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) >= 3  # coherence over training, recovery-vs-preservation cosine, pairwise cosines
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "mopd" in text and "Coh(all)" in text
    assert os.environ["MOPDX_COHERENCE_PROMPTS"] == "3"
