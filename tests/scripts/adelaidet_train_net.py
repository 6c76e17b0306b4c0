"""AdelaiDet's tools/train_net.py pattern with its imports pointed at this package: ``Trainer(DefaultTrainer)``
with ``build_evaluator``, ``setup``/``main``, ``default_argument_parser`` and ``launch``. It adds a hook that counts
steps (its state rides in the checkpoints) and, when EMBEDMASK_TEST_KILL_AT is set, kills its own process with
SIGKILL in that iteration (a crash that leaves no chance to save). With EMBEDMASK_TEST_VALIDATION=JSON:IMAGES it
also registers that dataset as "validation" and adds a ValidationLoss every iteration, and EarlyStopping on it."""

import json
import os
import signal

from adet.checkpoint import AdetCheckpointer
from adet.config import get_cfg
from adet.data.datasets import register_coco_instances
from adet.engine import DefaultTrainer, default_argument_parser, default_setup, hooks, launch
from adet.evaluation import COCOEvaluator, DatasetEvaluators
from adet.utils import comm


class CountSteps(hooks.HookBase):
    def __init__(self, log_path):
        self.steps = 0
        self.log_path = log_path

    def after_step(self):
        self.steps += 1
        with open(self.log_path, "a") as f:
            losses = {k: v for k, (v, _) in self.trainer.storage.latest().items() if k.startswith("loss_")}
            f.write(json.dumps({"iteration": self.trainer.iter, "steps": self.steps, "rank": comm.get_rank(),
                                **losses}) + "\n")
        if self.trainer.iter == int(os.environ.get("EMBEDMASK_TEST_KILL_AT", -1)):
            os.kill(os.getpid(), signal.SIGKILL)

    def state_dict(self):
        return {"steps": self.steps}

    def load_state_dict(self, state):
        self.steps = state["steps"]


class Trainer(DefaultTrainer):
    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference")
        return DatasetEvaluators([COCOEvaluator(dataset_name, cfg, True, output_folder)])

    def build_hooks(self):
        extra = []
        if os.environ.get("EMBEDMASK_TEST_VALIDATION"):
            extra = [hooks.ValidationLoss("validation", period=1),
                     hooks.EarlyStopping("validation_loss", patience=1, mode="min")]
        return super().build_hooks() + [CountSteps(os.path.join(self.cfg.OUTPUT_DIR, "steps.jsonl"))] + extra


def setup(args):
    cfg = get_cfg()
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    default_setup(cfg, args)
    return cfg


def main(args):
    json_file, image_root = os.environ["EMBEDMASK_TEST_DATASET"].split(":")
    register_coco_instances("shapes", {}, json_file, image_root)
    if os.environ.get("EMBEDMASK_TEST_VALIDATION"):
        json_file, image_root = os.environ["EMBEDMASK_TEST_VALIDATION"].split(":")
        register_coco_instances("validation", {}, json_file, image_root)
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        AdetCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        return Trainer.test(cfg, model)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    results = trainer.train()
    if comm.is_main_process():
        with open(os.path.join(cfg.OUTPUT_DIR, "results.json"), "w") as f:
            json.dump(results, f)
    return results


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    print("Command Line Args:", args)
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))
