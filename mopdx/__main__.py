"""``python -m mopdx``: see ``mopdx.cli``."""

import sys

from mopdx.cli import main

sys.exit(main())
