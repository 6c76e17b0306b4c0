#!/usr/bin/env python
"""``embedmask visualize``: see `adet/cli/visualize.py` or `--help`."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout's adet

from adet.cli.errors import run_cli  # noqa: E402
from adet.cli.visualize import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(run_cli(main))
