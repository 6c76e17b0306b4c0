"""Every error a user can act on, under one root: :class:`EmbedMaskError`.

A leaf module (it imports nothing from ``adet``), so any module may raise these and the command line reports every
one of them the same way: one line naming the file, key or option and what is wrong, never a traceback
(``adet/cli/errors.py``). Each class also derives from the built-in exception it refines (``ConfigError`` is a
``ValueError``, ``ImageReadError`` an ``OSError``...), so callers catching the built-ins keep working.
"""

from __future__ import annotations


class EmbedMaskError(Exception):
    """The root of the errors whose message is meant for the user: one line naming the culprit."""


class ConfigError(EmbedMaskError, ValueError):
    """A config file or override that cannot be applied; the message names the source and the key."""


class PreflightError(EmbedMaskError, ValueError):
    """A command line or config that cannot work; the message names the option or key and what is wrong."""


class ExportCheckError(EmbedMaskError, RuntimeError):
    """An exported graph that failed its check after it was written: ONNX Runtime disagrees with PyTorch, or the
    int8 graph loses more accuracy than allowed. The file is kept aside under another name, which the message gives."""


class LaunchError(EmbedMaskError, RuntimeError):
    """A launch request that cannot be satisfied (e.g. more GPUs than exist); the message says what to change."""


class DatasetError(EmbedMaskError, ValueError):
    """A dataset file or folder that cannot be used; the message is one line naming it."""


class UnknownDatasetError(EmbedMaskError, KeyError):
    """A dataset name that is not registered (a KeyError, as in detectron2; its message is one line)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class ImageReadError(EmbedMaskError, OSError):
    """An image file that cannot be decoded or used; the message names the file."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ImageSizeError(ImageReadError):
    """An image whose size differs from the one its annotation file gives."""


class ImageTooLargeError(ImageReadError):
    """An image larger than a limit (its header's pixel count, or its encoded size), refused before decoding."""


class InputError(EmbedMaskError, FileNotFoundError):
    """Inputs named on the command line that do not exist or cannot be used (images, videos, a camera)."""


class WeightFileError(EmbedMaskError, RuntimeError):
    """A weight file that is missing or unreadable; the message says which and what to do."""


class CheckpointError(WeightFileError):
    """A checkpoint that cannot be loaded into the model; the message says which file and why."""


class TrainingDivergedError(EmbedMaskError, FloatingPointError):
    """A loss became NaN or infinite; the message names the iteration and the term."""


class Preempted(EmbedMaskError):
    """Training stopped on a signal (SIGTERM, SIGUSR1, SIGUSR2) after saving a resumable checkpoint: not a
    failure. The command exits with 128 + the signal's number, as a process ended by it would."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum
