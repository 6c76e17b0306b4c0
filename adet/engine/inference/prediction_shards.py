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


def complete_lines(path: str) -> Iterator[tuple[int, dict]]:
    """(byte offset, record) of each complete, parseable line of a shard."""
    with open(path, "rb") as f:
        offset = 0
        for line in f:
            if line.endswith(b"\n"):
                try:
                    yield offset, json.loads(line)
                except ValueError:
                    pass  # a line another writer cut short, then went on after: redone
            offset += len(line)


def done_images(folder: str) -> dict[str, tuple[str, int]]:
    """{input path: (shard, offset of its line)} of every image some earlier process finished."""
    done: dict[str, tuple[str, int]] = {}
    for path in sorted(glob.glob(os.path.join(folder, SHARD_PATTERN))):
        for offset, record in complete_lines(path):
            done.setdefault(record["file"], (path, offset))
    return done


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
    the number of detections. An image missing from every shard is an error naming it."""
    done = done_images(folder)
    missing = [s for s in sources if s not in done]
    if missing:
        raise InputError(f"{len(missing)} image(s) have no predictions in {folder} (e.g. {missing[0]}); rerun the "
                         "same command to finish them")
    count, temporary = 0, f"{json_path}.tmp-{os.getpid()}"
    handles: dict[str, IO[bytes]] = {}
    try:
        with open(temporary, "wb") as out:
            out.write(b"[")
            for source in sources:
                shard, offset = done[source]
                handle = handles.get(shard) or handles.setdefault(shard, open(shard, "rb"))
                handle.seek(offset)
                line = handle.readline().rstrip(b"\n")
                start = line.index(DETECTIONS_KEY) + len(DETECTIONS_KEY)
                records = line[start:-2]  # the array's text without its brackets (the line ends with "]}")
                if records:
                    out.write((b"," if count else b"") + records)
                    count += json.loads(line[:start - len(DETECTIONS_KEY)] + b"}")["count"]
            out.write(b"]")
        os.replace(temporary, json_path)
    finally:
        for handle in handles.values():
            handle.close()
        if os.path.exists(temporary):
            os.remove(temporary)
    return count
