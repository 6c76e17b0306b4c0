"""One training run per OUTPUT_DIR: a run claims its folder for as long as it lives.

The claim is ``OUTPUT_DIR/run.lock``, created atomically (O_EXCL) by the process that launches the run (rank 0
under torchrun or srun), holding the host, pid, the process's start time and when the claim was made, and touched
every ``HEARTBEAT_S`` seconds. A second run there is refused at once, naming the holder. A claim whose holder is
gone is taken over with a warning: on the same host, when no process with that pid and start time exists (kill -9,
a crash); from another host, when the claim has not been touched for ``STALE_AFTER_S`` (a node that vanished).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time

from adet.errors import PreflightError

logger = logging.getLogger(__name__)

LOCK_NAME = "run.lock"
HEARTBEAT_S = 30.0
STALE_AFTER_S = 180.0


def _process_start_time(pid: int) -> str | None:
    """The kernel's start time of process ``pid`` (field 22 of /proc/pid/stat), None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _holder_is_alive(holder: dict, lock_path: str) -> bool:
    if holder.get("host") == socket.gethostname():
        started = _process_start_time(int(holder.get("pid", -1)))
        return started is not None and started == holder.get("process_start")
    try:
        return time.time() - os.path.getmtime(lock_path) < STALE_AFTER_S
    except OSError:
        return False


def _describe(holder: dict) -> str:
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started", 0)))
    return f"pid {holder.get('pid')} on {holder.get('host')}, since {since}"


class RunClaim:
    """The claim of one folder; :meth:`release` (or the end of a ``with`` block) gives it up."""

    def __init__(self, output_dir: str):
        self.path = os.path.join(output_dir, LOCK_NAME)
        self.info = {"host": socket.gethostname(), "pid": os.getpid(),
                     "process_start": _process_start_time(os.getpid()), "started": time.time()}
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    def acquire(self) -> RunClaim:
        for _ in range(2):  # a stale claim is moved aside once, then ours is created
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._take_over_if_stale()
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(self.info, f)
            self._heartbeat = threading.Thread(target=self._beat, name="run-claim", daemon=True)
            self._heartbeat.start()
            return self
        raise PreflightError(f"OUTPUT_DIR {os.path.dirname(self.path)}: another run took it just now")

    def _take_over_if_stale(self) -> None:
        try:
            with open(self.path, encoding="utf-8") as f:
                holder = json.load(f)
        except (OSError, ValueError):
            holder = {}  # unreadable: a claim being written this instant, or garbage
            if time.time() - os.path.getmtime(self.path) < 5:
                raise PreflightError(f"OUTPUT_DIR {os.path.dirname(self.path)}: another run is claiming it right "
                                     "now") from None
        if holder and _holder_is_alive(holder, self.path):
            raise PreflightError(f"OUTPUT_DIR {os.path.dirname(self.path)} is in use by another run "
                                 f"({_describe(holder)}); wait for it, stop it, or choose another OUTPUT_DIR")
        aside = f"{self.path}.stale-{os.getpid()}"
        try:
            os.rename(self.path, aside)  # exactly one taker wins the rename
        except FileNotFoundError:
            return
        os.remove(aside)
        logger.warning("OUTPUT_DIR %s was claimed by a run that is gone (%s); taking it over",
                       os.path.dirname(self.path), _describe(holder) if holder else "unreadable claim")

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                os.utime(self.path)
            except OSError:
                return

    def release(self) -> None:
        self._stop.set()
        try:
            with open(self.path, encoding="utf-8") as f:
                mine = json.load(f).get("pid") == self.info["pid"]
            if mine:
                os.remove(self.path)
        except (OSError, ValueError):
            pass

    def __enter__(self) -> RunClaim:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


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
            os.replace(path, target)
            moved.append(os.path.basename(target))
    return moved
