"""One training run per OUTPUT_DIR: a run claims its folder for as long as it lives.

The claim is an exclusive ``flock`` on ``OUTPUT_DIR/run.lock``, taken without waiting: a second run there is
refused at once, naming the holder (host, pid, since when), which the holder writes into the file. The kernel
drops the lock when the holder's process ends, however it ends (kill -9, a crash, a vanished node's NFS lease), so
no liveness has to be guessed from host names or heartbeats; a file left by a dead holder is simply locked again
(with a warning naming it). After locking, the claim checks that the path still names the file it locked (a
releasing holder unlinks it): no check-then-act window.

A claim covers the process that took it and the processes it starts (``EMBEDMASK_RUN_CLAIM`` in their
environment): ``embedmask train`` claims before spawning its workers, and the trainer of a worker sees its folder
already claimed by its run. :class:`adet.engine.DefaultTrainer` claims its OUTPUT_DIR itself when nothing above it
has.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import time
from collections.abc import Iterator

from adet.errors import PreflightError

logger = logging.getLogger(__name__)

LOCK_NAME = "run.lock"
CLAIM_ENV = "EMBEDMASK_RUN_CLAIM"  # the folder this process's run claimed (inherited by its workers)
_HELD: dict[str, RunClaim] = {}  # folder (real path) -> the claim this process holds there


def _key(output_dir: str) -> str:
    return os.path.realpath(output_dir)


def claimed_by_this_run(output_dir: str) -> bool:
    """Whether this process, or the process that started it, holds the claim on ``output_dir``."""
    return _key(output_dir) in _HELD or os.environ.get(CLAIM_ENV) == _key(output_dir)


def _describe(holder: dict) -> str:
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started", 0)))
    return f"pid {holder.get('pid')} on {holder.get('host')}, since {since}"


def _read_holder(fd: int) -> dict:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        return json.loads(os.read(fd, 65536).decode("utf-8") or "{}")
    except (OSError, ValueError):
        return {}


class RunClaim:
    """The claim of one folder; :meth:`release` (or the end of a ``with`` block) gives it up."""

    def __init__(self, output_dir: str):
        self.output_dir = output_dir
        self.path = os.path.join(output_dir, LOCK_NAME)
        self.info = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}
        self._fd: int | None = None

    def acquire(self) -> RunClaim:
        os.makedirs(self.output_dir, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise PreflightError(f"OUTPUT_DIR {self.output_dir} is in use by another run"
                                     f"{f' ({_describe(holder)})' if holder else ''}; wait for it, stop it, or "
                                     "choose another OUTPUT_DIR") from None
            except OSError as e:
                if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                    os.close(fd)
                    raise
                logger.warning("OUTPUT_DIR %s: this file system cannot lock files (%s); a second run started in "
                               "this folder would not be refused", self.output_dir, e.strerror)
            try:
                same_file = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same_file = False
            if same_file:
                break
            os.close(fd)  # a holder released (unlinked) it between our open and our lock: lock the new one
        earlier = _read_holder(fd)
        if earlier:
            logger.warning("OUTPUT_DIR %s was claimed by a run that is gone (%s); taking it over", self.output_dir,
                           _describe(earlier))
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps(self.info).encode("utf-8"))
        self._fd = fd
        _HELD[_key(self.output_dir)] = self
        return self

    @contextlib.contextmanager
    def covering_workers(self) -> Iterator[None]:
        """Processes started inside this block (a launcher's workers) count as this run's: their trainers do not
        claim the folder again."""
        before = os.environ.get(CLAIM_ENV)
        os.environ[CLAIM_ENV] = _key(self.output_dir)
        try:
            yield
        finally:
            if before is None:
                os.environ.pop(CLAIM_ENV, None)
            else:
                os.environ[CLAIM_ENV] = before

    def release(self) -> None:
        if self._fd is None:
            return
        if _HELD.get(_key(self.output_dir)) is self:
            del _HELD[_key(self.output_dir)]
        try:
            os.remove(self.path)  # while locked: a run waiting to open it locks a new file (see acquire)
        except OSError:
            pass
        os.close(self._fd)  # drops the lock
        self._fd = None

    def __enter__(self) -> RunClaim:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def refuse_if_busy(output_dir: str) -> None:
    """PreflightError naming the holder if a live run holds ``output_dir``; holds nothing itself (a look before a
    folder is written to: ``default_setup`` writes config.yaml and log.txt before the trainer claims it)."""
    path = os.path.join(output_dir, LOCK_NAME)
    if claimed_by_this_run(output_dir) or not os.path.isfile(path):
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read_holder(fd)
        raise PreflightError(f"OUTPUT_DIR {output_dir} is in use by another run"
                             f"{f' ({_describe(holder)})' if holder else ''}; wait for it, stop it, or choose "
                             "another OUTPUT_DIR") from None
    except OSError:
        pass  # no locks on this file system: the trainer's claim says so
    finally:
        os.close(fd)


def archive_earlier_run(output_dir: str) -> list[str]:
    """Before a fresh (not resumed) run in a folder that holds an earlier one: move its ``metrics.json`` and
    ``last_checkpoint`` aside (suffixed with their time), so the new run neither appends to the old metrics nor can
    be resumed into the old run's checkpoints. Returns the new names."""
    moved = []
    for name in ("metrics.json", "last_checkpoint"):
        path = os.path.join(output_dir, name)
        if os.path.isfile(path):
            stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(os.path.getmtime(path)))
            target = f"{path}.{stamp}"
            if os.path.exists(target):  # two runs within a second
                target = f"{target}.{os.getpid()}"
            os.replace(path, target)
            moved.append(os.path.basename(target))
    return moved
