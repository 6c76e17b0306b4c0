from adet.errors import CheckpointError

from .detection_checkpoint import DetectionCheckpointer, checkpoint_config, resume_checkpoint
from .files import atomic_save, atomic_write_text, read_checkpoint_file, verify_checksums
from .weight_files import WeightFileError, resolve_weight_path

AdetCheckpointer = DetectionCheckpointer  # AdelaiDet's name (its tools/train_net.py imports it)

__all__ = [
    "AdetCheckpointer",
    "CheckpointError",
    "DetectionCheckpointer",
    "WeightFileError",
    "atomic_save",
    "atomic_write_text",
    "checkpoint_config",
    "read_checkpoint_file",
    "resume_checkpoint",
    "verify_checksums",
    "resolve_weight_path",
]
