#!/usr/bin/env python
"""Run EmbedMask on images, a video or the webcam and save the predictions drawn on them (``embedmask predict``).

    python demo/demo.py --config-file configs/EmbedMask/MS_R_101_3x.yaml --input demo/images --output demo/outputs \
        --opts MODEL.WEIGHTS models/EmbedMask_R_101_3x.pth

``--input`` takes image files, folders and glob patterns; ``--output`` a folder (or a file name for one input).
``--video-input FILE`` writes an annotated video, ``--webcam`` records (or shows) the camera stream, ``--json FILE``
saves the predictions as COCO results (dataset category ids, RLE masks). ``--help`` lists every option.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout's adet

from adet.cli.errors import run_cli  # noqa: E402
from adet.cli.predict import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(run_cli(main))
