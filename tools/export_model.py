#!/usr/bin/env python
"""Export EmbedMask to ONNX and check the file in ONNX Runtime (``embedmask export``).

    python tools/export_model.py --config-file configs/EmbedMask/MS_R_50_1x.yaml --output model.onnx \
        MODEL.WEIGHTS models/EmbedMask_R_50_1x.pth
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout's adet

from adet.cli.errors import run_cli  # noqa: E402
from adet.cli.export import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(run_cli(main))
