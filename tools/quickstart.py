#!/usr/bin/env python
"""EmbedMask end to end on a fresh machine, offline (``embedmask quickstart``): train on the bundled synthetic shapes
(or reuse the model a previous run cached in models/), evaluate it with the COCO protocol, and draw its predictions
on held-out images.

    python tools/quickstart.py             # reuses models/EmbedMask_synthetic.pth when present
    python tools/quickstart.py --retrain   # trains again

Run from the repository root, it writes output/embedmask_synthetic/, models/EmbedMask_synthetic.pth and
demo/outputs/synthetic_*.png there.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout's adet

from adet.cli.errors import run_cli  # noqa: E402
from adet.cli.quickstart import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(run_cli(main))
