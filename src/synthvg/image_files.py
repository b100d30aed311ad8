"""Reading image files so that one bad or huge file costs only itself.

Every failure of one file (missing, unreadable, not an image, truncated, too many pixels, out
of memory while decoding) is an :class:`ImageFileError` carrying its ``errors`` kind and a
one-line reason (no memory addresses: Pillow names a ``BytesIO`` by its ``repr``). The size
is read from the header first, so a file over the pixel limit is refused before any pixel is
decoded. Large images are decoded downscaled where the caller allows (``max_side``): JPEG in
the decoder itself (DCT scaling, ``draft``), so memory stays at the reduced size; other
formats are decoded once and reduced at once, before any copy is made.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import re
import threading
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

#: Pillow refuses images above twice its ``MAX_IMAGE_PIXELS`` (178,956,970 pixels by default)
#: whatever we allow; ``seeds.max_image_pixels`` may not exceed it.
PILLOW_LIMIT = 2 * (Image.MAX_IMAGE_PIXELS or 0) or None
#: Above this many pixels the seeds stage checks a file without holding all its pixels (JPEG
#: decoded at 1/8 scale, PNG by its chunk checksums); below it, a full decode is cheap.
FULL_DECODE_PIXELS = 1 << 25

_OPEN_LOCK = threading.Lock()
_PILLOW_PIXELS = re.compile(r"\((\d+) pixels\)")


class ImageFileError(ValueError):
    """One image file cannot be used; ``kind`` is its ``errors`` row kind."""

    def __init__(self, kind: str, reason: str):
        super().__init__(reason)
        self.kind = kind


@dataclass(frozen=True)
class CheckedImage:
    """What the seeds stage records of a usable image file."""

    width: int
    height: int
    sha256: str


def read_bytes(uri: str) -> bytes:
    try:
        if "://" not in uri and "::" not in uri:  # a local path: fsspec's import is not needed
            with open(os.path.expanduser(uri), "rb") as f:
                return f.read()
        import fsspec

        with fsspec.open(uri, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise ImageFileError("bad_image", f"image file not found: {uri}") from None
    except (OSError, ValueError) as e:
        raise ImageFileError("bad_image", f"cannot read image file {uri}: {_reason(e)}") from None
    except MemoryError:
        raise ImageFileError(
            "image_too_large", f"ran out of memory reading image file {uri}"
        ) from None


def _too_large(
    uri: str, pixels: int, limit: int, size: tuple[int, int] | None = None
) -> ImageFileError:
    shape = f"{size[0]}x{size[1]} = " if size else ""
    return ImageFileError(
        "image_too_large",
        f"image {uri} is {shape}{pixels:,} pixels, over the limit of {limit:,} (seeds.max_image_pixels); image skipped",
    )


def _reason(e: BaseException) -> str:
    """An exception as text, without the ``<... object at 0x...>`` reprs Pillow puts in."""
    text = re.sub(r"<[^<>]* at 0x[0-9a-fA-F]+>", "the data", str(e)).strip()
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def open_header(data: bytes, uri: str, max_pixels: int | None = None) -> Image.Image:
    """The image, opened lazily (header only); refuses it when over ``max_pixels``."""
    if not data:
        raise ImageFileError("bad_image", f"cannot decode image {uri}: the file is empty (0 bytes)")
    try:
        with _OPEN_LOCK, warnings.catch_warnings():
            # We enforce our own limit below; Pillow's warning would only be noise (or, with
            # warnings turned into errors, a crash). The filter is process-wide, hence the lock;
            # opening reads only the header, so holding it is cheap.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        m = _PILLOW_PIXELS.search(str(e))  # Pillow's limit is the ceiling of ours: over both
        raise _too_large(
            uri, int(m.group(1)) if m else 0, max_pixels or PILLOW_LIMIT or 0
        ) from None
    except UnidentifiedImageError:
        raise ImageFileError(
            "bad_image",
            f"cannot decode image {uri}: not an image file Pillow can read ({len(data):,} bytes)",
        ) from None
    except MemoryError:
        raise ImageFileError("image_too_large", f"ran out of memory opening image {uri}") from None
    except Exception as e:  # any decoder fault of one file is that file's error
        raise ImageFileError(
            "bad_image", f"cannot decode image {uri} (corrupt or truncated?): {_reason(e)}"
        ) from None
    w, h = img.size
    if max_pixels is not None and w * h > max_pixels:
        raise _too_large(uri, w * h, max_pixels, img.size)
    return img


def decode(img: Image.Image, uri: str, max_side: int | None = None) -> Image.Image:
    """Decode an image :func:`open_header` opened; see :func:`read_image` for ``max_side``."""
    w, h = img.size
    try:
        if max_side is not None and max(w, h) > max_side:
            scale = max_side / max(w, h)
            img.draft(None, (math.ceil(w * scale), math.ceil(h * scale)))  # JPEG: decode smaller
            img.load()
            factor = max(img.size) // max_side
            return img.reduce(factor) if factor > 1 else img
        img.load()
        return img
    except MemoryError:
        raise ImageFileError(
            "image_too_large", f"ran out of memory decoding the {w}x{h} image {uri}"
        ) from None
    except Exception as e:
        raise ImageFileError(
            "bad_image", f"cannot decode image {uri} (corrupt or truncated?): {_reason(e)}"
        ) from None


def read_image(
    uri: str, *, max_pixels: int | None = None, max_side: int | None = None
) -> tuple[bytes, Image.Image]:
    """The file's bytes and its decoded image. With ``max_side`` a larger image comes back
    smaller, but with its long side still at least ``max_side`` (callers that work at that
    size then lose nothing); ``img.size`` is then not the file's size."""
    data = read_bytes(uri)
    return data, decode(open_header(data, uri, max_pixels), uri, max_side)


def check_image(uri: str, max_pixels: int | None) -> CheckedImage:
    """Size and sha256 of a file that decodes, checked in bounded memory.

    Up to :data:`FULL_DECODE_PIXELS` the file is decoded fully. Above it, a JPEG's whole
    stream is decoded at 1/8 scale (DCT scaling) and a PNG's chunks are checked (every CRC up
    to IEND), so a 12000x12000 image costs megabytes, not gigabytes; other formats are decoded
    fully (at most ``max_pixels`` of them).
    """
    data = read_bytes(uri)
    img = open_header(data, uri, max_pixels)
    w, h = img.size
    if w * h <= FULL_DECODE_PIXELS:
        decode(img, uri, None)
    elif img.format == "PNG":
        try:
            img.verify()
        except Exception as e:
            raise ImageFileError(
                "bad_image", f"cannot decode image {uri} (corrupt or truncated?): {_reason(e)}"
            ) from None
    else:
        decode(img, uri, max(w, h) // 8 if img.format in ("JPEG", "MPO") else None)
    return CheckedImage(w, h, hashlib.sha256(data).hexdigest())


def to_rgb(img: Image.Image) -> np.ndarray:
    """H x W x 3 uint8 from any mode: grayscale is repeated, alpha dropped, 16-bit and float
    images scaled down (PIL alone would clip them to white). EXIF orientation is not applied:
    annotations are in the file's stored orientation."""
    if img.mode == "F":
        a = np.asarray(img, dtype=np.float64)
        lo, hi = float(a.min()), float(a.max())
        img = Image.fromarray(((a - lo) / (hi - lo or 1.0) * 255).astype(np.uint8))
    elif img.mode.startswith("I"):
        a = np.asarray(img, dtype=np.int64)
        img = Image.fromarray(np.clip(a // 257 if a.max() > 255 else a, 0, 255).astype(np.uint8))
    return np.asarray(img if img.mode == "RGB" else img.convert("RGB"))  # convert() would copy
