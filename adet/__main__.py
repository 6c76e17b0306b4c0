"""``python -m adet COMMAND ...`` is ``embedmask COMMAND ...``."""

import sys

from adet.cli import main

sys.exit(main())
