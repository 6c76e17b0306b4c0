"""Prediction results written as they come, and picked up after a kill with ``--resume``.

Each process appends one JSON line per image to ``predictions.rank<R>.jsonl`` in a results folder and flushes it:
``{"file": <input path>, "count": N, "detections": [COCO results]}``. ``predictions.run.json`` records what produced
the results: the weights by content (sha256), the config, the threshold and the ground truth. A fresh run replaces
these files (and nothing else in the folder); a resumed run reads every shard first (whatever the number of
processes before), skips the images already there, and the owner of a shard cuts off a line a kill left half written
(that image is predicted again). A resume with other settings is refused instead of mixing results. The final COCO
json is assembled from the shards in input order, streaming, so memory does not grow with the number of images.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator
from typing import IO

from adet.checkpoint import atomic_write_text
from adet.errors import InputError

SHARD_PATTERN = "predictions.rank*.jsonl"
# Where a line's detections begin: the key cannot occur unescaped inside the file name, which comes before it.
DETECTIONS_KEY = b', "detections": ['

RUN_FILE = "predictions.run.json"


def shard_path(folder: str, rank: int) -> str:
    return os.path.join(folder, f"predictions.rank{rank}.jsonl")


def line_head(line: bytes) -> dict | None:
    """``{"file": ..., "count": N}`` of a complete shard line, from the text before its detections (which are not
    parsed); None for a line a kill cut short or another writer broke."""
    cut = line.find(DETECTIONS_KEY)
    if cut < 0 or not line.endswith(b"]}\n"):
        return None
    try:
        head = json.loads(line[:cut] + b"}")
    except ValueError:
        return None
    return head if isinstance(head, dict) and isinstance(head.get("file"), str) else None


def complete_lines(path: str) -> Iterator[tuple[int, dict]]:
    """(byte offset, head) of each complete line of a shard (:func:`line_head`)."""
    with open(path, "rb") as f:
        offset = 0
        for line in f:
            head = line_head(line)
            if head is not None:
                yield offset, head
            offset += len(line)


class DoneIndex:
    """The images some earlier process finished in a results folder: where each one's line is (shard, offset) and
    its detection count. Built in one pass over each shard, reading each line's head only, into an SQLite table in
    a temporary folder: memory does not grow with the number of images. The first line of an image wins (shards in
    name order), as :func:`assemble_json` reads it."""

    def __init__(self, folder: str):
        self.shards = sorted(glob.glob(os.path.join(folder, SHARD_PATTERN)))
        self._folder = tempfile.mkdtemp(prefix="embedmask-done-")
        self.db = sqlite3.connect(os.path.join(self._folder, "done.sqlite"))
        self.db.execute("PRAGMA journal_mode = OFF")
        self.db.execute("PRAGMA synchronous = OFF")
        self.db.execute("CREATE TABLE done (file TEXT PRIMARY KEY, shard INTEGER, offset INTEGER, count INTEGER)")
        with self.db:
            for number, path in enumerate(self.shards):
                self.db.executemany("INSERT OR IGNORE INTO done VALUES (?, ?, ?, ?)",
                                    ((head["file"], number, offset, head.get("count", 0))
                                     for offset, head in complete_lines(path)))

    def __len__(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM done").fetchone()[0]

    def in_order(self, sources: list[str]) -> Iterator[tuple[str, tuple[str, int, int] | None]]:
        """(source, (shard, byte offset of its line, detection count) or None when not done) of each of ``sources``,
        in their order: one join inside SQLite instead of a query per image."""
        self.db.execute("CREATE TEMP TABLE IF NOT EXISTS wanted (position INTEGER PRIMARY KEY, file TEXT)")
        self.db.execute("DELETE FROM wanted")
        self.db.executemany("INSERT INTO wanted VALUES (?, ?)", enumerate(sources))
        rows = self.db.execute("SELECT wanted.file, done.shard, done.offset, done.count FROM wanted LEFT JOIN done "
                               "ON done.file = wanted.file ORDER BY wanted.position")
        for source, shard, offset, count in rows:
            yield source, None if shard is None else (self.shards[shard], offset, count)

    def close(self) -> None:
        self.db.close()
        shutil.rmtree(self._folder, ignore_errors=True)

    def __enter__(self) -> DoneIndex:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def file_sha256(path: str) -> str:
    """The content digest by which a results folder knows its weights (a retrained ``model_final.pth`` at the same
    path is other weights)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def own_files(folder: str) -> list[str]:
    """The files a prediction run writes into its results folder besides the drawings: its shards and run record."""
    run_file = os.path.join(folder, RUN_FILE)
    return sorted(glob.glob(os.path.join(folder, SHARD_PATTERN))) + ([run_file] if os.path.isfile(run_file) else [])


def prepare_folder(folder: str, settings: dict, resume: bool) -> None:
    """Make ``folder`` hold the results of the run ``settings`` describe. Fresh (``resume`` False): our own files of
    an earlier run are replaced; nothing else there is touched. Resumed: the earlier run's results are kept when it
    had the same settings, and anything else is refused (:class:`InputError`)."""
    path = os.path.join(folder, RUN_FILE)
    if resume and os.path.isfile(path):
        with open(path) as f:
            try:
                earlier = json.load(f)
            except ValueError:
                earlier = {}
        if earlier != settings:
            changed = ", ".join(k for k in sorted(set(earlier) | set(settings)) if earlier.get(k) != settings.get(k))
            raise InputError(f"--resume: {folder} holds predictions made with other settings ({changed}); rerun "
                             "without --resume to predict afresh into it, or use another --output")
        return
    if resume and glob.glob(os.path.join(folder, SHARD_PATTERN)):
        raise InputError(f"--resume: {folder} holds prediction shards without {RUN_FILE}, so what made them is "
                         "unknown; rerun without --resume to predict afresh into it")
    for earlier_file in own_files(folder):
        os.remove(earlier_file)
    os.makedirs(folder, exist_ok=True)
    atomic_write_text(json.dumps(settings, indent=1), path)


def cut_partial_line(path: str) -> None:
    """Remove what follows the last complete line of a shard (what a kill during a write left)."""
    end = 0
    for offset, _ in complete_lines(path):
        end = offset
    with open(path, "rb") as f:
        f.seek(end)
        last = f.readline()
    keep = end + len(last) if last.endswith(b"\n") else end
    if keep < os.path.getsize(path):
        with open(path, "r+b") as f:
            f.truncate(keep)


def repair_shards(folder: str, rank: int, world_size: int) -> None:
    """Cut the partial lines of the shards this process owns now: its own, and those of ranks an earlier, larger run
    had (rank k belongs to k mod world_size), so that every shard ends with a complete line."""
    for path in glob.glob(os.path.join(folder, SHARD_PATTERN)):
        number = os.path.basename(path)[len("predictions.rank"):-len(".jsonl")]
        if number.isdigit() and int(number) % world_size == rank:
            cut_partial_line(path)


class ShardWriter:
    """This process's shard, opened for appending (after :func:`repair_shards`)."""

    def __init__(self, folder: str, rank: int):
        self.path = shard_path(folder, rank)
        os.makedirs(folder, exist_ok=True)
        self.file: IO[str] = open(self.path, "a", encoding="utf-8")

    def write(self, source: str, detections: list[dict]) -> None:
        # "detections" last: the assembly copies its text without parsing it (DETECTIONS_KEY)
        self.file.write(json.dumps({"file": source, "count": len(detections), "detections": detections}) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def assemble_json(folder: str, sources: list[str], json_path: str) -> int:
    """Write the COCO results of ``sources`` (in this order) from the shards to ``json_path`` atomically; returns
    the number of detections. Each line's detections are copied as text, never parsed. An image missing from every
    shard is an error naming it."""
    with DoneIndex(folder) as done:
        missing = [source for source, where in done.in_order(sources) if where is None]
        if missing:
            raise InputError(f"{len(missing)} image(s) have no predictions in {folder} (e.g. {missing[0]}); rerun "
                             "the same command with --resume to finish them")
        count, temporary = 0, f"{json_path}.tmp-{os.getpid()}"
        handles: dict[str, IO[bytes]] = {}
        try:
            with open(temporary, "wb") as out:
                out.write(b"[")
                for _, (shard, offset, detections) in done.in_order(sources):
                    handle = handles.get(shard) or handles.setdefault(shard, open(shard, "rb"))
                    handle.seek(offset)
                    line = handle.readline().rstrip(b"\n")
                    records = line[line.index(DETECTIONS_KEY) + len(DETECTIONS_KEY):-2]  # without "[" and "]}"
                    if records:
                        out.write((b"," if count else b"") + records)
                        count += detections
                out.write(b"]")
            os.replace(temporary, json_path)
        finally:
            for handle in handles.values():
                handle.close()
            if os.path.exists(temporary):
                os.remove(temporary)
    return count
