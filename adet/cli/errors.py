"""How a command ends: every failure as one line ``error: <file or key>: <what is wrong>`` and an exit status
(2 bad input, 1 unexpected failure, 130 Ctrl-C), never a traceback unless asked for (``EMBEDMASK_DEBUG=1``)."""

from __future__ import annotations

import logging
import os
import sys
import traceback
from typing import Callable

from adet.errors import EmbedMaskError, Preempted


def _user_error_names() -> set[str]:
    names, pending = set(), [EmbedMaskError]
    while pending:
        cls = pending.pop()
        names.add(cls.__name__)
        pending += cls.__subclasses__()
    return names


def _from_worker(error: BaseException) -> str | None:
    """The last line, "module.Type: message", of a DataLoader worker's traceback re-raised in this process."""
    text = str(error)
    if "Original Traceback (most recent call last)" not in text:
        return None
    return [line for line in text.splitlines() if line.strip()][-1]


def is_user_error(error: BaseException) -> bool:
    """A problem with the input (reported without traceback), not a bug: an EmbedMaskError or OSError, also one
    raised in a DataLoader worker."""
    if isinstance(error, (EmbedMaskError, OSError)):
        return True
    worker_line = _from_worker(error)
    return worker_line is not None and worker_line.partition(": ")[0].rsplit(".", 1)[-1] in _user_error_names()


def one_line(error: BaseException) -> str:
    """What to tell the user about ``error``, in one line naming the file or key involved."""
    worker_line = _from_worker(error)
    if worker_line is not None:
        error_type, _, message = worker_line.partition(": ")
        return message if error_type.rsplit(".", 1)[-1] in _user_error_names() else worker_line
    text = str(error)
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        return f"{error.filename}: {error.strerror}"
    return text.strip().splitlines()[0] if text.strip() else type(error).__name__


def _process_rank() -> int:
    """This process's rank in a process group, 0 without one. torch.distributed is looked up, not imported: a run
    with a group has loaded it, and the commands' --help and input errors stay free of torch."""
    dist = sys.modules.get("torch.distributed")
    return dist.get_rank() if dist is not None and dist.is_available() and dist.is_initialized() else 0


def report_error(error: BaseException, prefix: str = "", show: bool = True) -> int:
    """Print ``error: {prefix}...`` (when ``show``) and return the exit status: 2 for a problem with the input, 1 for
    anything unexpected, whose traceback goes to the log file (and to stderr with EMBEDMASK_DEBUG=1). A run stopped
    on a signal (:class:`Preempted`) is not an error: rank 0 says where it stopped, and the status is 128 + signum."""
    if isinstance(error, Preempted):
        if show and _process_rank() == 0:
            print(str(error), file=sys.stderr)
        return error.exit_code
    expected = is_user_error(error)
    if show:
        message = one_line(error)
        if not expected:
            message = f"unexpected {type(error).__name__}: {message} (the traceback is in the log; " \
                      "EMBEDMASK_DEBUG=1 prints it)"
        print(f"error: {prefix}{message}", file=sys.stderr)
    if not expected:
        logging.getLogger("adet").debug("Traceback of the unexpected error", exc_info=error)
        if os.environ.get("EMBEDMASK_DEBUG") == "1":
            traceback.print_exception(type(error), error, error.__traceback__)
    return 2 if expected else 1


def run_cli(main: Callable[[list[str] | None], object], argv: list[str] | None = None) -> int:
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
        # Under torchrun and srun every process checks the command line: rank 0 alone reports what they all found.
        return report_error(e, show=os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")) == "0")
    return 0
