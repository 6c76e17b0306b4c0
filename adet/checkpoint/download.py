"""Weight files named by URL: found in the caches users already have, or downloaded once into ours.

``MODEL.WEIGHTS`` / ``--weights`` may be a local path, ``detectron2://ImageNetPretrained/MSRA/R-50.pkl`` (detectron2's
download server), ``https://...`` (``#sha256=<hex>`` at the end pins its checksum) or
``hf://owner/repo/path/file.pth[@revision]`` (the Hugging Face Hub, through ``huggingface_hub``: the ``hub`` extra).
A URL is looked for in ``models/<file name>``, in detectron2's cache (iopath: ``$FVCORE_CACHE``, default
``~/.torch/iopath_cache``) and in ours (``$EMBEDMASK_CACHE``, default ``<torch hub dir>/embedmask``), and only then
downloaded: into a partial file, verified (size, and sha256 when known: :data:`KNOWN_SHA256`, the URL's fragment, or
a torch-hub style ``name-<sha256 prefix>.pth``; an unknown file has its sha256 logged), then renamed into place.
A file lock makes concurrent processes (the ranks of a node, jobs sharing a cache) download it once; the others wait
and use it. ``EMBEDMASK_OFFLINE=1`` (or ``HF_HUB_OFFLINE=1``) never touches the network.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator

import torch
from tqdm import tqdm

try:
    import fcntl
except ImportError:  # Windows: no lock, each process downloads for itself
    fcntl = None

from adet.errors import WeightFileError

logger = logging.getLogger(__name__)

D2_URL_PREFIX = "detectron2://"
D2_DOWNLOAD_ROOT = "https://dl.fbaipublicfiles.com/detectron2/"
HF_PREFIX = "hf://"
# sha256 (or a prefix of at least 8 hex digits) of files whose content is known; torchvision's ResNets carry theirs
# in the file name.
KNOWN_SHA256 = {
    "https://download.pytorch.org/models/resnet50-0676ba61.pth": "0676ba61",
    "https://download.pytorch.org/models/resnet50-11ad3fa6.pth": "11ad3fa6",
    "https://download.pytorch.org/models/resnet101-63fe2227.pth": "63fe2227",
    "https://download.pytorch.org/models/resnet101-cd907fc2.pth": "cd907fc2",
}
CHUNK = 1 << 20


def is_url(path: str) -> bool:
    return path.startswith((D2_URL_PREFIX, HF_PREFIX, "http://", "https://"))


def offline() -> bool:
    return any(os.environ.get(name, "0").lower() in ("1", "true", "yes") for name in
               ("EMBEDMASK_OFFLINE", "HF_HUB_OFFLINE"))


def cache_root() -> str:
    return os.path.expanduser(os.environ.get("EMBEDMASK_CACHE") or os.path.join(torch.hub.get_dir(), "embedmask"))


def iopath_cache_root() -> str:
    return os.path.expanduser(os.environ.get("FVCORE_CACHE", "~/.torch/iopath_cache"))


def split_url(path: str) -> tuple[str, str | None]:
    """(the download URL, the expected sha256 or None) of a ``detectron2://`` or ``http(s)://`` name."""
    url, _, fragment = path.partition("#")
    if url.startswith(D2_URL_PREFIX):
        url = D2_DOWNLOAD_ROOT + url[len(D2_URL_PREFIX):]
    expected = fragment[len("sha256="):].lower() if fragment.startswith("sha256=") else None
    if expected is None:
        expected = KNOWN_SHA256.get(url)
    if expected is None:  # torch hub's convention: name-<first hex digits of the sha256>.ext
        match = re.search(r"-([0-9a-f]{8,64})\.[A-Za-z0-9]+$", urllib.parse.urlparse(url).path)
        expected = match.group(1) if match else None
    return url, expected


def cached_candidates(path: str) -> list[str]:
    """Where a URL's file may already be: models/, detectron2's iopath cache, then ours (the download target)."""
    url, _ = split_url(path)
    parsed = urllib.parse.urlparse(url)
    relative = parsed.netloc + parsed.path
    # iopath keeps a URL's file under its path (detectron2://X is at <cache>/detectron2/X).
    return [os.path.join("models", os.path.basename(parsed.path)),
            os.path.join(iopath_cache_root(), parsed.path.lstrip("/")), os.path.join(cache_root(), relative)]


def resolve_url(path: str) -> str:
    """The local file of a weight URL, downloading it when no cache has it."""
    if path.startswith(HF_PREFIX):
        return resolve_hf(path)
    candidates = cached_candidates(path)
    for candidate in candidates:
        if os.path.isfile(candidate):
            return candidate
    url, expected = split_url(path)
    if offline():
        raise WeightFileError(f"{path} is not on this machine and downloads are off (EMBEDMASK_OFFLINE/HF_HUB_OFFLINE):"
                              f" download {url} elsewhere and put it at {candidates[0]} (or {candidates[-1]})")
    try:
        download(url, candidates[-1], expected)
    except WeightFileError as e:
        raise WeightFileError(f"{e}; or download it elsewhere and put it at {candidates[0]}") from None
    return candidates[-1]


@contextlib.contextmanager
def file_lock(path: str) -> Iterator[None]:
    """An exclusive lock on ``path`` (created), held while the block runs; a no-op where fcntl is missing."""
    if fcntl is None:
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def download(url: str, destination: str, expected_sha256: str | None = None, timeout: float = 60) -> None:
    """``url`` to ``destination``, atomically and once: under a lock, unless another process finished it first."""
    os.makedirs(os.path.dirname(destination) or ".", exist_ok=True)
    with file_lock(destination + ".lock"):
        if os.path.isfile(destination):
            return  # another process downloaded it while this one waited
        partial = f"{destination}.part-{os.getpid()}"
        try:
            digest = fetch(url, partial, timeout)
            if expected_sha256 and not digest.startswith(expected_sha256):
                raise WeightFileError(f"{url}: the download's sha256 is {digest}, expected {expected_sha256}: "
                                      "corrupt or replaced on the server; nothing was kept, try again")
            os.replace(partial, destination)
        finally:
            if os.path.exists(partial):
                os.remove(partial)
    if expected_sha256:
        logger.info("Downloaded %s to %s (sha256 verified)", url, destination)
    else:
        logger.info("Downloaded %s to %s; sha256 %s (not known in advance: pin it with #sha256=%s)", url, destination,
                    digest, digest)


def fetch(url: str, path: str, timeout: float) -> str:
    """Stream ``url`` into ``path`` with a progress bar on a terminal; returns the sha256. An error names the URL
    when the server refuses, the connection fails, or fewer bytes arrive than announced."""
    digest, received = hashlib.sha256(), 0
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(path, "wb") as f:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=os.path.basename(url),
                      disable=not sys.stderr.isatty()) as bar:
                while chunk := response.read(CHUNK):
                    f.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as e:
        raise WeightFileError(f"{url}: the server answered {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:  # includes http.client.IncompleteRead
        reason = getattr(e, "reason", None) or e
        raise WeightFileError(f"{url}: download failed after {received} bytes ({reason}); nothing was kept, try "
                              "again") from None
    if total is not None and received != total:
        raise WeightFileError(f"{url}: the download stopped at {received} of {total} bytes; nothing was kept, try "
                              "again")
    return digest.hexdigest()


def resolve_hf(path: str) -> str:
    """``hf://owner/repo/path/in/repo[@revision]`` through huggingface_hub's cache (its own offline mode too)."""
    spec, _, revision = path[len(HF_PREFIX):].partition("@")
    parts = spec.split("/")
    if len(parts) < 3 or not all(parts):
        raise WeightFileError(f"{path}: expected hf://owner/repo/path/to/file[@revision]")
    try:
        import huggingface_hub  # optional: the hub extra
    except ImportError:
        raise WeightFileError(f"{path}: Hugging Face locations need huggingface_hub: pip install "
                              "'embedmask[hub]'") from None
    try:
        return huggingface_hub.hf_hub_download("/".join(parts[:2]), "/".join(parts[2:]), revision=revision or None)
    except Exception as e:  # noqa: BLE001 - the hub's errors (offline and not cached, missing repo...) in one line
        raise WeightFileError(f"{path}: {type(e).__name__}: {' '.join(str(e).split())[:300]}") from None
