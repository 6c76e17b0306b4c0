"""Load and save model checkpoints in detectron2's format: ``{"model": state_dict, ...}`` (or a bare state dict);
reading, verifying and writing the files is ``files.py``'s."""

from __future__ import annotations

import logging
import os
from typing import Any

from torch import nn

from adet.config import CfgNode
from adet.errors import CheckpointError

from .files import atomic_save, atomic_write_text, read_checkpoint_file
from .official_names import convert_official_state_dict
from .report import compare_state_dicts
from .weight_files import (
    check_torchvision_compatible,
    is_torchvision_resnet,
    load_backbone_weights,
    read_msra_pkl,
    resolve_weight_path,
    torchvision_to_detectron2,
)

logger = logging.getLogger(__name__)


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def checkpoint_config(weights: str) -> CfgNode | None:
    """The config saved in one of our checkpoints (None for official checkpoints and ImageNet weights)."""
    path = resolve_weight_path(weights)
    if path.endswith(".pkl"):
        return None
    text = read_checkpoint_file(path).get("config")
    if not isinstance(text, str):
        return None
    try:
        return CfgNode.load_cfg(text)
    except Exception as e:  # noqa: BLE001 - any YAML or type problem means the saved config is unusable
        raise CheckpointError(f"{weights}: its saved config cannot be read ({str(e).splitlines()[0]})") from None


def resume_checkpoint(output_dir: str) -> str | None:
    """The checkpoint ``--resume`` will continue from: the one ``last_checkpoint`` names, which must exist, be
    readable and hold the training state; None when nothing was ever saved in ``output_dir`` (a fresh start)."""
    marker = os.path.join(output_dir, "last_checkpoint")
    saved = sorted(f for f in os.listdir(output_dir) if f.startswith("model_") and f.endswith(".pth")) if \
        os.path.isdir(output_dir) else []
    if not os.path.exists(marker):
        if saved:
            raise CheckpointError(f"--resume: {output_dir} holds {', '.join(saved[-3:])} but no last_checkpoint "
                                 "naming the one to continue from; write its file name into "
                                 f"{marker}, or start afresh in another OUTPUT_DIR")
        return None
    try:
        with open(marker, encoding="utf-8") as f:
            name = f.read().strip()
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"--resume: {marker} cannot be read ({e})") from None
    if not name or "\n" in name or os.sep in name or not name.endswith(".pth"):
        raise CheckpointError(f"--resume: {marker} should hold the file name of a checkpoint in {output_dir} "
                             f"(e.g. model_0004999.pth), it holds {name[:60]!r}")
    path = os.path.join(output_dir, name)
    if not os.path.isfile(path):
        raise CheckpointError(f"--resume: {marker} names {name}, which does not exist in {output_dir}")
    data = read_checkpoint_file(path)
    missing = [k for k in ("iteration", "optimizer", "scheduler") if k not in data]
    if missing:
        raise CheckpointError(f"--resume: {path} holds weights only (no {', '.join(missing)}); resume from a "
                             "periodic checkpoint (write its name into last_checkpoint)")
    return path


class DetectionCheckpointer:
    """Loads official and own checkpoints into a model; saves checkpoints (with optional extra objects, e.g.
    ``optimizer=...``, whose ``state_dict()`` is stored and restored) into ``save_dir``."""

    def __init__(self, model: nn.Module, save_dir: str = "", *, save_to_disk: bool = True,
                 **checkpointables: Any):
        self.model = model
        self.save_dir = save_dir
        self.save_to_disk = save_to_disk
        self.checkpointables = checkpointables

    # ---- loading ---------------------------------------------------------------------------------------------------
    def load(self, path: str, checkpointables: list[str] | None = None, strict: bool = True) -> dict[str, Any]:
        """Load ``path`` into the model (and the named checkpointables; all of them when None).

        ``path`` may be an EmbedMask checkpoint (ours or official), a detectron2 MSRA ImageNet ``.pkl`` or a
        torchvision ResNet ``.pth`` (these two initialise the backbone only), or a ``detectron2://`` URL of a file
        in the local cache. With ``strict`` a full checkpoint must match the model exactly; otherwise mismatches
        are reported and skipped. Returns the checkpoint's other entries (e.g. ``iteration``).
        """
        if not path:
            logger.info("No MODEL.WEIGHTS given: the model keeps its random initialisation")
            return {}
        model = _unwrap(self.model)
        local = resolve_weight_path(path)
        if local.endswith(".pkl"):
            report = load_backbone_weights(model, read_msra_pkl(local), path)
            logger.info("Initialised the backbone from the MSRA ImageNet weights %s\n%s", path, report.summary())
            return {}
        data = read_checkpoint_file(local)
        if is_torchvision_resnet(data["model"]):
            check_torchvision_compatible(model, path)
            report = load_backbone_weights(model, torchvision_to_detectron2(data["model"]), path)
            logger.info("Initialised the backbone from the torchvision ResNet %s\n%s", path, report.summary())
            return {}
        state_dict = convert_official_state_dict(data.pop("model"))
        report = compare_state_dicts(state_dict, model.state_dict())
        if not report.ok:
            if strict:
                logger.info("%s does not match the model:\n%s", path, report.summary())
                raise CheckpointError(f"{path} does not match the model: {report.brief()}; is it for this config "
                                      "(depth, number of classes)?")
            logger.warning("%s does not fully match the model; loading what matches:\n%s", path, report.summary())
        model.load_state_dict(report.loadable(state_dict), strict=False)
        logger.info("Loaded %d tensors from %s", len(report.loaded), path)
        for key in ("class_names", "category_ids"):
            if key in data and hasattr(model, key):
                setattr(model, key, list(data[key]))
        for name in self.checkpointables if checkpointables is None else checkpointables:
            if name in data and name in self.checkpointables:
                self.checkpointables[name].load_state_dict(data.pop(name))
        return data

    # ---- saving ----------------------------------------------------------------------------------------------------
    def save(self, name: str, resumable: bool = True, **extra: Any) -> str | None:
        """Write ``save_dir/name.pth`` atomically with the model and ``extra``. A ``resumable`` checkpoint also holds
        the checkpointables (optimizer, schedule...) and becomes the one ``last_checkpoint`` names; otherwise it holds
        the weights only (half the size, for inference and fine-tuning). Returns the path (None when this process
        does not save)."""
        if not self.save_dir or not self.save_to_disk:
            return None
        model = _unwrap(self.model)
        data: dict[str, Any] = {"model": model.state_dict()}
        if resumable:
            for key, obj in self.checkpointables.items():
                data[key] = obj.state_dict()
        for key in ("class_names", "category_ids"):
            if getattr(model, key, None) is not None and key not in extra:
                extra[key] = list(getattr(model, key))
        data.update(extra)
        path = os.path.join(self.save_dir, f"{name}.pth")
        atomic_save(data, path)
        if resumable:
            atomic_write_text(os.path.basename(path), os.path.join(self.save_dir, "last_checkpoint"))
        logger.info("Saved checkpoint %s", path)
        return path

    def get_checkpoint_file(self) -> str | None:
        """The file ``last_checkpoint`` names, if it exists."""
        marker = os.path.join(self.save_dir, "last_checkpoint")
        if not os.path.isfile(marker):
            return None
        with open(marker) as f:
            path = os.path.join(self.save_dir, f.read().strip())
        return path if os.path.isfile(path) else None

    def has_checkpoint(self) -> bool:
        return self.get_checkpoint_file() is not None

    def resume_or_load(self, path: str, *, resume: bool = True) -> dict[str, Any]:
        """With ``resume`` and a checkpoint in ``save_dir``, restore everything from it; else load ``path`` into the
        model only, leniently (fine-tuning to other classes skips the class-specific layers with a warning)."""
        if resume and self.has_checkpoint():
            return self.load(self.get_checkpoint_file())
        return self.load(path, checkpointables=[], strict=False)
