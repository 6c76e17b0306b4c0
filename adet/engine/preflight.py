"""Checks made before any work starts, so that a mistake costs seconds rather than a training run, and is reported
once, as one line naming the option or config key, rather than once per process."""

from __future__ import annotations

import os
import tempfile


class PreflightError(ValueError):
    """A command line or config that cannot work; the message names the option or key and what is wrong."""


def _probe_writable(folder: str) -> str | None:
    """None if a file can be created in ``folder``, else the reason (a real write: permission bits mean little to
    root, and read-only file systems do not show in them)."""
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            return None
    except OSError as e:
        return e.strerror or str(e)


def check_output_folder(path: str, what: str) -> None:
    """``path`` is, or can be created as, a folder this process can write into."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise PreflightError(f"{what} {path}: is a file, not a folder")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise PreflightError(f"{what} {path}: cannot create this folder ({e.strerror or e})") from None
    reason = _probe_writable(path)
    if reason:
        raise PreflightError(f"{what} {path}: cannot write into this folder ({reason})")


def check_output_file(path: str, what: str) -> None:
    """``path`` names a file this process can write (its folder is created if needed)."""
    if os.path.isdir(path):
        raise PreflightError(f"{what} {path}: is a folder, expected a file name")
    folder = os.path.dirname(os.path.abspath(path))
    try:
        check_output_folder(folder, what)
    except PreflightError as e:
        raise PreflightError(f"{what} {path}: {str(e).split(': ', 1)[1]}") from None
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise PreflightError(f"{what} {path}: the file exists and is not writable")
