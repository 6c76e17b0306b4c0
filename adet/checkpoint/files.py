"""Checkpoint files: read safely and verified, written atomically.

Reading: ``torch.load(weights_only=True)``, so a file that would need arbitrary code to unpickle is refused, never
run; and first every CRC-32 the zip archive stores is checked against the data (torch's reader does not: a file with
flipped bytes, e.g. a bad copy between file systems, would load silently).

Writing: to a temporary file in the same folder, flushed and fsync'ed, then renamed over the target, so an
interrupted save never leaves a half-written checkpoint, and ``last_checkpoint`` always names a complete file. A save
that fails (disk full, quota, read-only file system) is one error naming the file and the cause; the temporary file
is removed and the previous checkpoint is untouched.
"""

from __future__ import annotations

import os
import pickle
import resource
import shutil
import tempfile
import zipfile
from typing import IO, Any, Callable

import torch

from adet.errors import CheckpointError
from adet.utils import comm


def _atomic_write(path: str, write: Callable[[IO[bytes]], None], suffix: str = "") -> None:
    folder = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=folder)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except Exception as error:
        reason = _save_failure(error, folder, tmp)  # while the partial file still takes its space
        _remove(tmp)
        raise CheckpointError(f"{path}: could not be saved: {reason}; nothing was written (an earlier file of that "
                              "name, and last_checkpoint, are unchanged)") from None
    except BaseException:  # Ctrl-C or a stop: nothing half-written stays behind
        _remove(tmp)
        raise


def _remove(path: str | None) -> None:
    if path and os.path.exists(path):
        os.remove(path)


def _save_failure(error: Exception, folder: str, partial: str | None) -> str:
    """Why a write failed, in words: the OS's reason; or, as torch's writer reports any failed write as an internal
    error ("unexpected pos"), what the file system says: a full disk, or the file-size limit reached."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    try:
        free = shutil.disk_usage(folder).free
        written = os.path.getsize(partial) if partial else 0
    except OSError:
        free, written = None, 0
    if free is not None and free < 2**20:
        return f"No space left on device ({free / 2**20:.1f} MiB free in {folder})"
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if limit != resource.RLIM_INFINITY and written >= limit - 2**16:
        return f"File too large (the file-size limit, ulimit -f, is {limit / 2**20:.1f} MiB)"
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"


def atomic_save(obj: Any, path: str) -> None:
    """torch.save ``obj`` to ``path`` via a temporary file in the same folder and an atomic rename."""
    _atomic_write(path, lambda f: torch.save(obj, f), suffix=".pth")


def atomic_write_text(text: str, path: str) -> None:
    _atomic_write(path, lambda f: f.write(text.encode("utf-8")))


# The archives whose CRCs matched in this process, as (real path, inode, size, mtime in ns): a command reads its
# checkpoint's config, checks it before work and loads it, and only the first of those reads the whole file. A file
# replaced or rewritten since (another inode, size or time) is verified again.
_verified: set[tuple[str, int, int, int]] = set()


def verify_checksums(path: str) -> None:
    """Every member of the zip archive at ``path`` matches its stored CRC-32 (reads the whole file, once per file
    and process while it is unchanged)."""
    stat = os.stat(path)
    key = (os.path.realpath(path), stat.st_ino, stat.st_size, stat.st_mtime_ns)
    if key in _verified:
        return
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable torch checkpoint: the archive is incomplete or damaged ({e}); "
                              "copy it again") from None
    if damaged is not None:
        raise CheckpointError(f"{path}: corrupt: the data of '{damaged}' does not match its stored checksum (a "
                              "damaged copy?); copy it again or use another checkpoint")
    _verified.add(key)


def read_checkpoint_file(path: str) -> dict[str, Any]:
    """The checkpoint at ``path`` as a dict with a ``"model"`` state dict (a bare state dict is wrapped)."""
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such checkpoint file")
    with open(path, "rb") as f:
        head = f.read(64)
    # torch.save writes a zip archive (legacy files: a pickle, whose first byte is the 0x80 protocol marker).
    if not head:
        raise CheckpointError(f"{path}: the file is empty")
    if not head.startswith((b"PK\x03\x04", b"\x80")):
        shown = head[:24].decode("utf-8", "replace").splitlines()[0] if head[:1].isascii() else head[:8].hex()
        raise CheckpointError(f"{path}: not a torch checkpoint (it starts with {shown!r}); expected a .pth file "
                              "written by torch.save")
    if head.startswith(b"PK\x03\x04"):
        verify_checksums(path)
    try:
        # Memory-mapped when the file allows: reading a config or checking a file before loading it costs little.
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=head.startswith(b"PK\x03\x04"))
    except pickle.UnpicklingError as e:
        reason = str(e).strip().splitlines()
        detail = next((line for line in reason if "Unsupported global" in line), reason[0] if reason else "")
        raise CheckpointError(f"{path}: refused: it contains Python objects that would need arbitrary code to "
                              f"unpickle ({detail.strip()}); only tensors and plain containers are loaded") from None
    except (RuntimeError, EOFError, OSError) as e:
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a dict, found a {type(data).__name__}")
    if "model" not in data:
        if not data or not all(isinstance(v, torch.Tensor) for v in data.values()):
            raise CheckpointError(f"{path}: neither a {{'model': state_dict}} checkpoint nor a bare state dict")
        data = {"model": data}
    if not isinstance(data["model"], dict):
        raise CheckpointError(f"{path}: its 'model' entry is a {type(data['model']).__name__}, not a state dict")
    return data


def remove_stale_temporaries(output_dir: str) -> None:
    """Partial files of a save that was killed midway (never a .pth: saves are atomic renames)."""
    if comm.is_main_process() and os.path.isdir(output_dir):
        for name in os.listdir(output_dir):
            if name.startswith(".tmp-"):
                os.remove(os.path.join(output_dir, name))
