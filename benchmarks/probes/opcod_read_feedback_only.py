"""One-off probe (docs/experiments/opcod.md), run from the repository root: the read-other
contexts with feedback only (no solution), to see whether the strong peer's own-solution slip comes
from the other domain's *solution* contexts. It patches read_other_examples; not an option of the lab."""
import sys

import mopdx_lab.opcod as op
from mopdx.codistill.privileged import teacher_context
from mopdx.data import Example


def fb_only(others, own, share, templates, seed):
    if share <= 0 or not others:
        return []
    picked = op.replay_examples(others, own, share, seed + 1)
    return [Example(e.domain, teacher_context(e.prompt, None, op.anchored_steps(e), templates), e.answer) for e in picked]

op.read_other_examples = fb_only
from mopdx.cli import main

sys.exit(main(["lab", "build", "--strategy", "opcod", "--config", "configs/experiment/opcod_v2.yaml", "lab.opcod.specialise_read_other=0.2001"]))
