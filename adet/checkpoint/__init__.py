from .detection_checkpoint import (
    CheckpointError,
    DetectionCheckpointer,
    atomic_save,
    atomic_write_text,
    checkpoint_config,
    read_checkpoint_file,
    resume_checkpoint,
)
from .weight_files import WeightFileError, resolve_weight_path

__all__ = [
    "CheckpointError",
    "DetectionCheckpointer",
    "WeightFileError",
    "atomic_save",
    "atomic_write_text",
    "checkpoint_config",
    "read_checkpoint_file",
    "resume_checkpoint",
    "resolve_weight_path",
]
