"""What every command-line tool shares: detectron2's argument parser, config setup, logging and error reporting."""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys

import torch

from adet.checkpoint import WeightFileError
from adet.config import ConfigError, get_cfg
from adet.data import DatasetError, ImageReadError, MetadataCatalog, coco_class_names, register_coco_instances
from adet.data.catalog import DatasetCatalog, UnknownDatasetError
from adet.utils import comm

from .launch import LaunchError
from .preflight import PreflightError
from .trainer import TrainingDivergedError

# Errors a user can act on: reported as one line, never as a traceback.
USER_ERRORS = (ConfigError, DatasetError, WeightFileError, ImageReadError, LaunchError, FileNotFoundError,
               TrainingDivergedError, PreflightError, UnknownDatasetError)


class ArgumentParser(argparse.ArgumentParser):
    """Options and trailing ``KEY VALUE`` overrides in any order (``... OUTPUT_DIR out --resume`` resumes)."""

    def parse_args(self, args=None, namespace=None):  # noqa: D102 - argparse's
        return self.parse_intermixed_args(args, namespace)


CONFIG_KEY = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+$")


def default_argument_parser(description: str = "EmbedMask training and evaluation",
                            prog: str | None = None) -> ArgumentParser:
    parser = ArgumentParser(prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
                            epilog="KEY VALUE pairs (anywhere on the line) override config keys, e.g. "
                                   "SOLVER.IMS_PER_BATCH 2 MODEL.WEIGHTS models/x.pth")
    parser.add_argument("--config-file", default="", metavar="FILE",
                        help="a config file, or a packaged config such as EmbedMask/MS_R_50_1x.yaml")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the last checkpoint in OUTPUT_DIR (model, optimizer, schedule, data order)")
    parser.add_argument("--eval-only", action="store_true", help="only evaluate MODEL.WEIGHTS on DATASETS.TEST")
    parser.add_argument("--num-gpus", type=int, default=1, help="processes per machine (one per GPU; CPU processes "
                                                                "with MODEL.DEVICE cpu)")
    parser.add_argument("--num-machines", type=int, default=1, help="total number of machines")
    parser.add_argument("--machine-rank", type=int, default=0, help="the rank of this machine (0 .. machines-1)")
    parser.add_argument("--dist-url", default="auto", help="tcp://HOST:PORT of machine 0; 'auto' on one machine")
    parser.add_argument("--dataset", action="append", default=[], metavar="NAME=ANNOTATIONS.json:IMAGES/",
                        help="register a COCO-format dataset (repeatable); use NAME in DATASETS.TRAIN/TEST")
    parser.add_argument("--log-period", type=int, default=20, metavar="N",
                        help="write losses to the console and metrics.json every N iterations")
    parser.add_argument("opts", nargs="*", default=[], metavar="KEY VALUE", help="config overrides")
    return parser


def register_datasets_from_args(specs: list[str], quiet: bool = False) -> list[str]:
    """Register ``NAME=ANNOTATIONS.json:IMAGES/`` datasets (class names come from the json); returns the names.
    With ``quiet``, a name already registered with the same files is left as it is (workers of one launch)."""
    names = []
    for spec in specs:
        name, sep, paths = spec.partition("=")
        json_file, sep2, image_root = paths.rpartition(":")
        if not (sep and sep2 and name and json_file and image_root):
            raise DatasetError(f"--dataset {spec}: expected NAME=ANNOTATIONS.json:IMAGES_FOLDER")
        if not os.path.isfile(json_file):
            raise DatasetError(f"--dataset {name}: annotation file {json_file} does not exist")
        if not os.path.isdir(image_root):
            raise DatasetError(f"--dataset {name}: image folder {image_root} does not exist")
        if name in DatasetCatalog:
            metadata = MetadataCatalog.get(name)
            if quiet and (metadata.get("json_file"), metadata.get("image_root")) == (json_file, image_root):
                names.append(name)
                continue
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        register_coco_instances(name, {"thing_classes": coco_class_names(json_file)}, json_file, image_root)
        names.append(name)
    return names


def setup_cfg(args: argparse.Namespace, freeze: bool = True):
    """Config from ``--config-file`` and the trailing overrides. When the first training dataset was given with
    ``--dataset``, MODEL.FCOS.NUM_CLASSES follows its annotation file (unless overridden on the command line)."""
    from adet.model_zoo import get_config_file

    cfg = get_cfg()
    if args.config_file:
        cfg.merge_from_file(get_config_file(args.config_file))
    cfg.merge_from_list(list(args.opts))
    given = [spec.partition("=")[0] for spec in getattr(args, "dataset", [])]
    if cfg.DATASETS.TRAIN and cfg.DATASETS.TRAIN[0] in given and "MODEL.FCOS.NUM_CLASSES" not in args.opts[0::2]:
        classes = MetadataCatalog.get(cfg.DATASETS.TRAIN[0]).get("thing_classes")
        if classes and len(classes) != cfg.MODEL.FCOS.NUM_CLASSES:
            logging.getLogger(__name__).info("MODEL.FCOS.NUM_CLASSES set to %d, the classes of %s", len(classes),
                                             cfg.DATASETS.TRAIN[0])
            cfg.MODEL.FCOS.NUM_CLASSES = len(classes)
    if freeze:
        cfg.freeze()
    return cfg


class _EarlyRecords(logging.Handler):
    """Keeps what is logged before OUTPUT_DIR is known (config notices), to write it into log.txt later."""

    def __init__(self, capacity: int = 1000):
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.capacity = capacity

    def emit(self, record: logging.LogRecord) -> None:
        if len(self.records) < self.capacity:
            self.records.append(record)


def setup_logger(output_dir: str | None = None, rank: int = 0, name: str = "adet") -> logging.Logger:
    """INFO to the console on rank 0, everything to ``output_dir/log.txt`` (``log.txt.rank{r}`` on other ranks).
    Records logged since an earlier call without ``output_dir`` are written to the new log file first."""
    logger = logging.getLogger(name)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    early = [r for h in logger.handlers if isinstance(h, _EarlyRecords) for r in h.records]
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    formatter = logging.Formatter("[%(asctime)s %(name)s]: %(message)s", datefmt="%m/%d %H:%M:%S")
    if rank == 0:
        console = logging.StreamHandler(sys.stdout)
        console.setLevel(logging.INFO)
        console.setFormatter(formatter)
        logger.addHandler(console)
    if output_dir:
        os.makedirs(output_dir, exist_ok=True)
        path = os.path.join(output_dir, "log.txt" if rank == 0 else f"log.txt.rank{rank}")
        file_handler = logging.FileHandler(path)
        file_handler.setLevel(logging.DEBUG)
        file_handler.setFormatter(formatter)
        for record in early:
            file_handler.handle(record)
        logger.addHandler(file_handler)
    else:
        logger.addHandler(_EarlyRecords())
    return logger


def default_setup(cfg, args: argparse.Namespace | None = None) -> None:
    """Create OUTPUT_DIR, set up logging, save the config there, seed the RNGs, and apply CUDNN_BENCHMARK and
    FLOAT32_PRECISION."""
    rank = comm.get_rank()
    if rank == 0 and cfg.OUTPUT_DIR:
        os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
    logger = setup_logger(cfg.OUTPUT_DIR, rank)
    logger.info("Rank %d of %d; command line: %s", rank, comm.get_world_size(), " ".join(sys.argv))
    logger.info("torch %s, CUDA available: %s", torch.__version__, torch.cuda.is_available())
    if rank == 0 and cfg.OUTPUT_DIR:
        path = os.path.join(cfg.OUTPUT_DIR, "config.yaml")
        with open(path, "w") as f:
            f.write(cfg.dump())
        logger.info("Full config saved to %s", path)
    if cfg.SEED >= 0:
        torch.manual_seed(cfg.SEED + rank)
    torch.backends.cudnn.benchmark = bool(cfg.CUDNN_BENCHMARK) and not cfg.DETERMINISTIC
    if cfg.FLOAT32_PRECISION:
        torch.set_float32_matmul_precision(cfg.FLOAT32_PRECISION)


def one_line(error: BaseException) -> str:
    """What to tell the user about ``error``, in one line naming the file or key involved."""
    text = str(error)
    if "Original Traceback (most recent call last)" in text:
        # An exception re-raised from a DataLoader worker carries the worker's traceback in its message; its
        # last line is the original "module.Type: message".
        last = [line for line in text.splitlines() if line.strip()][-1]
        error_type, _, message = last.partition(": ")
        return message if error_type.rsplit(".", 1)[-1] in {e.__name__ for e in USER_ERRORS} else last
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        return f"{error.filename}: {error.strerror}"
    return text.strip().splitlines()[0] if text.strip() else type(error).__name__


def report_error(error: BaseException, prefix: str = "", show: bool = True) -> int:
    """Print ``error: {prefix}...`` (when ``show``) and return the exit status: 2 for a problem with the input, 1 for
    anything unexpected, whose traceback goes to the log file (and to stderr with EMBEDMASK_DEBUG=1)."""
    expected = isinstance(error, USER_ERRORS + (OSError,)) or (
        "Original Traceback" in str(error) and any(e.__name__ in str(error) for e in USER_ERRORS))
    if show:
        message = one_line(error)
        if not expected:
            message = f"unexpected {type(error).__name__}: {message} (the traceback is in the log; " \
                      "EMBEDMASK_DEBUG=1 prints it)"
        print(f"error: {prefix}{message}", file=sys.stderr)
    if not expected:
        logging.getLogger("adet").debug("Traceback of the unexpected error", exc_info=error)
        if os.environ.get("EMBEDMASK_DEBUG") == "1":
            import traceback

            traceback.print_exception(type(error), error, error.__traceback__)
    return 2 if expected else 1


def run_cli(main, argv: list[str] | None = None) -> int:
    """Call ``main(argv)`` with every error reported as one line on stderr (exit status 2 for bad input, 1 for an
    unexpected failure); Ctrl-C exits with 130. Work already saved stays usable (checkpoints are atomic)."""
    try:
        main(argv)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except SystemExit as e:  # argparse's usage errors and a launcher's exit status
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    except Exception as e:  # noqa: BLE001 - the one place where any failure becomes one line
        # Under torchrun every process checks the command line: rank 0 alone reports what they all found.
        return report_error(e, show=os.environ.get("RANK", "0") == "0")
    return 0
