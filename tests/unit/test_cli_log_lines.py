"""Log lines of a CLI command print above the progress bars, not glued to a bar's end."""

from __future__ import annotations

import io
import logging
import sys

from tqdm import tqdm

from mopdx.cli import _logs_above_bars


def test_console_log_lines_go_through_tqdm_write(monkeypatch) -> None:
    out = io.StringIO()
    monkeypatch.setattr(sys, "stderr", out)
    console = logging.StreamHandler(sys.stderr)
    monkeypatch.setattr(logging.root, "handlers", [console])
    log = logging.getLogger("mopdx.test_cli_log_lines")
    with _logs_above_bars():
        assert console not in logging.root.handlers  # redirected for the command
        bar = tqdm(total=3, file=out, ascii=True, bar_format="{desc}{n}/{total}", desc="step ")
        bar.update(1)
        log.warning("eval @ step 1")
        bar.close()
    assert logging.root.handlers == [console]  # and restored after it
    lines = out.getvalue().replace("\r", "\n").splitlines()
    assert "eval @ step 1" in lines  # a line of its own, not "step 1/3eval @ step 1"


def test_a_callers_own_logging_is_left_alone(monkeypatch) -> None:
    mine = logging.StreamHandler(io.StringIO())  # not a console handler
    monkeypatch.setattr(logging.root, "handlers", [mine])
    with _logs_above_bars():
        assert logging.root.handlers == [mine]
