#!/usr/bin/env python
"""Train and evaluate EmbedMask, detectron2/AdelaiDet style (the same as ``embedmask train`` / ``embedmask eval``).

    python tools/train_net.py --config-file configs/EmbedMask/MS_R_50_1x.yaml --num-gpus 4 OUTPUT_DIR out
    python tools/train_net.py --config-file configs/EmbedMask/MS_R_50_1x.yaml --eval-only MODEL.WEIGHTS x.pth
    torchrun --nproc_per_node 4 tools/train_net.py --config-file ...   # also works
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout's adet

from adet.cli.errors import run_cli  # noqa: E402
from adet.cli.train import main  # noqa: E402

cli = main  # what scripts importing this file call

if __name__ == "__main__":
    sys.exit(run_cli(main))
