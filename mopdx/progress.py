"""One switch for progress bars: ``--quiet`` (or ``TQDM_DISABLE=1``) turns them all off.

Read at call time, because the CLI sets it after modules are imported.
"""

from __future__ import annotations

import os


def progress_disabled() -> bool:
    return os.environ.get("TQDM_DISABLE", "") not in ("", "0")
