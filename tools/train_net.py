#!/usr/bin/env python
"""Train and evaluate EmbedMask, detectron2/AdelaiDet style (the same as ``embedmask train`` / ``embedmask eval``).

    python tools/train_net.py --config-file configs/EmbedMask/MS_R_50_1x.yaml --num-gpus 4 OUTPUT_DIR out
    python tools/train_net.py --config-file configs/EmbedMask/MS_R_50_1x.yaml --eval-only MODEL.WEIGHTS x.pth
    torchrun --nproc_per_node 4 tools/train_net.py --config-file ...   # also works

As in AdelaiDet, the experiment is a ``Trainer(DefaultTrainer)``: override ``build_evaluator``,
``build_train_loader``, ``build_hooks``... here. The command line around it (config checks before any process
starts, --num-gpus / torchrun / SLURM launch, the OUTPUT_DIR claim, one-line errors) is ``adet.cli.train``.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout's adet

from adet.cli.errors import run_cli  # noqa: E402
from adet.cli.train import main  # noqa: E402
from adet.engine import DefaultTrainer  # noqa: E402
from adet.engine.evaluate import inference_folder  # noqa: E402
from adet.evaluation import COCOEvaluator  # noqa: E402


class Trainer(DefaultTrainer):
    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return COCOEvaluator(dataset_name, output_dir=output_folder or inference_folder(cfg, dataset_name))

    def build_hooks(self):
        return super().build_hooks()  # + [EarlyStopping("segm/AP", patience=5)] (adet.engine.training.hooks)...


def cli(argv=None):
    """What scripts importing this file call."""
    return main(argv, trainer_class=Trainer)


if __name__ == "__main__":
    sys.exit(run_cli(cli))
