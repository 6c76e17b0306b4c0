#!/usr/bin/env python
"""``embedmask analyze``: see `adet/cli/analyze.py` or `--help`."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout's adet

from adet.cli.analyze import main  # noqa: E402
from adet.cli.errors import run_cli  # noqa: E402

if __name__ == "__main__":
    sys.exit(run_cli(main))
