"""Reading images the way detectron2 does: PIL decode, EXIF orientation applied, converted to BGR (or RGB) uint8."""

from __future__ import annotations

import io
import os
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from adet.errors import ConfigError, ImageReadError, ImageTooLargeError


def check_image_format(format: str) -> None:
    """``INPUT.FORMAT`` is one of the channel orders EmbedMask reads ("BGR" or "RGB")."""
    if format not in ("BGR", "RGB"):
        raise ConfigError(f"INPUT.FORMAT must be 'BGR' or 'RGB', got '{format}'")


def read_image(path: str, format: str = "BGR") -> np.ndarray:
    """(H, W, 3) uint8 in ``format`` ("BGR" or "RGB"); grayscale and palette images are converted to colour and an
    alpha channel is dropped."""
    check_image_format(format)
    try:
        with Image.open(path) as image:
            array = _colour_pixels(image)
    except FileNotFoundError:
        raise ImageReadError(f"{path}: no such file") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ImageReadError(f"{path}: not a readable image ({e})") from None
    return np.ascontiguousarray(array[:, :, ::-1]) if format == "BGR" else array


def decode_image(data: bytes, name: str = "image", max_pixels: int | None = None) -> np.ndarray:
    """The (H, W, 3) BGR uint8 pixels of an encoded image (PNG, JPEG, ...), exactly as :func:`read_image` gives the
    same bytes from a file. ``max_pixels``: an image whose header declares more is refused before its pixels are
    allocated (:class:`ImageTooLargeError`): a small file can declare a huge image (a decompression bomb). Errors
    name ``name`` and say what is wrong (empty, not an image, truncated)."""
    if not data:
        raise ImageReadError(f"{name}: empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit applies, below
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
                if max_pixels is not None and width * height > max_pixels:
                    raise ImageTooLargeError(f"{name}: {width} x {height} pixels is more than the limit of "
                                             f"{max_pixels / 1e6:g} megapixels")
                array = _colour_pixels(image)
    except Image.DecompressionBombError:  # PIL's own limit, twice Image.MAX_IMAGE_PIXELS, met first
        limit = f" of {max_pixels / 1e6:g} megapixels" if max_pixels is not None else ""
        raise ImageTooLargeError(f"{name}: declares more than {2 * Image.MAX_IMAGE_PIXELS / 1e6:.0f} megapixels, over "
                                 f"the limit{limit}") from None
    except UnidentifiedImageError:
        raise ImageReadError(f"{name}: not an image PIL can decode ({len(data)} bytes starting "
                             f"{data[:8]!r})") from None
    except (OSError, SyntaxError, ValueError) as e:
        if isinstance(e, ImageReadError):
            raise
        raise ImageReadError(f"{name}: a broken or truncated image ({e})") from None
    return np.ascontiguousarray(array[:, :, ::-1])


def _colour_pixels(image: Image.Image) -> np.ndarray:
    """An opened image's RGB pixels, turned as its EXIF orientation says (what detectron2 reads)."""
    return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))


def as_color_uint8(image: np.ndarray, name: str = "image") -> np.ndarray:
    """Accept (H, W) gray, (H, W, 1), (H, W, 3) or (H, W, 4) uint8 and return (H, W, 3); anything else is an error
    naming what was passed."""
    if not isinstance(image, np.ndarray):
        raise TypeError(f"{name} must be a numpy array (H, W, 3) uint8, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise TypeError(f"{name} must be uint8 (0..255), got {image.dtype}")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4) or min(image.shape[:2]) == 0:
        raise ValueError(f"{name} must have shape (H, W, 3), got {image.shape}")
    if image.shape[2] == 1:
        return np.repeat(image, 3, axis=2)
    return np.ascontiguousarray(image[:, :, :3])


def image_size(path: str) -> tuple[int, int] | None:
    """(width, height) of the image at ``path`` as :func:`read_image` gives it (EXIF orientation applied), from its
    header; None when it is missing or unreadable."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            orientation = image.getexif().get(0x0112, 1)  # 5-8: rotated by 90 or 270 degrees
    except (FileNotFoundError, UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return None
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def image_id_from_name(path: str) -> int | str:
    """COCO's file naming (``000000397133.jpg`` is image 397133): the numeric stem as an int, else the file name."""
    stem = os.path.splitext(os.path.basename(path))[0]
    return int(stem) if stem.isdigit() else os.path.basename(path)
