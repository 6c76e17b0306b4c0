"""tools/train_net.py with a slow evaluation, for test_cluster.py: EMBEDMASK_TEST_SCORE_SECONDS makes rank 0's COCO
scoring take that long, EMBEDMASK_TEST_IMAGE_SECONDS each evaluated image. The patch is at module level, so the
processes spawn starts (which import this file as their main module) have it too."""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from adet.evaluation import coco_evaluation  # noqa: E402

_score, _process = coco_evaluation.COCOEvaluator._evaluate_task, coco_evaluation.COCOEvaluator.process


def slow_score(self, *args, **kwargs):
    time.sleep(float(os.environ.get("EMBEDMASK_TEST_SCORE_SECONDS", "0")))
    return _score(self, *args, **kwargs)


def slow_process(self, *args, **kwargs):
    time.sleep(float(os.environ.get("EMBEDMASK_TEST_IMAGE_SECONDS", "0")))
    return _process(self, *args, **kwargs)


coco_evaluation.COCOEvaluator._evaluate_task = slow_score
coco_evaluation.COCOEvaluator.process = slow_process

if __name__ == "__main__":
    from adet.cli.errors import run_cli
    from adet.cli.train import main

    sys.exit(run_cli(main))
