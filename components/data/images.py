"""Image decoding, normalisation to the dataset's image policy, deterministic PNG encoding, content hashes.

Every image the builder stores goes through :func:`process_image`: decoded (a file via Pillow, or pixels a
source hands over), normalised to ``size x size`` in mode ``L`` or ``RGB`` (``pad`` keeps the aspect ratio,
``stretch`` ignores it, ``crop`` takes the centre), encoded as a PNG without any metadata chunk (no text, time
or ICC profile can carry patient data along), and named by the SHA-256 of the stored bytes. The same pixels
always give the same bytes, so an unchanged source rebuilds byte-identically::

    from components.data.images import process_image
    png, sha = process_image(pixels, size=64, mode="L", resize="pad", key="phantom/s0001/ct")
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from components.data.sources.base import DataError

RESIZE_POLICIES = ("pad", "stretch", "crop")
IMAGE_MODES = ("L", "RGB")
_RESAMPLE = Image.Resampling.BICUBIC


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def to_uint8(arr: np.ndarray) -> np.ndarray:
    """Scale any numeric array into uint8 (min-max); a uint8 array is returned as is."""
    if arr.dtype == np.uint8:
        return arr
    a = arr.astype(np.float64)
    lo, hi = float(np.min(a)), float(np.max(a))
    if hi <= lo:
        return np.zeros(a.shape, dtype=np.uint8)
    return np.round((a - lo) / (hi - lo) * 255.0).astype(np.uint8)


def decode_file(path: Path, *, key: str) -> np.ndarray:
    """Decode an image file to uint8 HxW or HxWx3. A missing, corrupt or truncated file raises DataError
    naming ``key`` and the file."""
    try:
        with Image.open(path) as img:
            img.load()  # forces the full decode: a truncated file fails here, not later
            return _pil_to_array(img)
    except FileNotFoundError:
        raise DataError(f"image {key}: file {path} does not exist") from None
    except UnidentifiedImageError:
        raise DataError(f"image {key}: file {path} is not an image Pillow can read (corrupt or wrong format)") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(f"image {key}: file {path} is corrupt or truncated ({e})") from None


def _pil_to_array(img: Image.Image) -> np.ndarray:
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return to_uint8(np.asarray(img))
    if img.mode in ("L", "RGB"):
        return np.asarray(img, dtype=np.uint8)
    if img.mode in ("1", "LA", "La"):
        return np.asarray(img.convert("L"), dtype=np.uint8)
    return np.asarray(img.convert("RGB"), dtype=np.uint8)  # P, RGBA, CMYK, YCbCr ...


def normalise(pixels: np.ndarray, *, size: int, mode: str, resize: str, key: str = "image") -> np.ndarray:
    """Return ``pixels`` as uint8 ``size x size`` (mode L) or ``size x size x 3`` (mode RGB)."""
    if mode not in IMAGE_MODES:
        raise ValueError(f"image mode must be one of {IMAGE_MODES}, got {mode!r}")
    if resize not in RESIZE_POLICIES:
        raise ValueError(f"resize policy must be one of {RESIZE_POLICIES}, got {resize!r}")
    arr = to_uint8(np.asarray(pixels))
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[:, :, :3]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] == 3)) or min(arr.shape[:2]) < 1:
        raise DataError(f"image {key}: expected HxW or HxWx3 pixels, got shape {arr.shape}")
    img = Image.fromarray(arr, "L" if arr.ndim == 2 else "RGB")
    img = img.convert(mode) if img.mode != mode else img
    w, h = img.size
    if (w, h) != (size, size):
        img = _fit(img, size, resize)
    return np.asarray(img, dtype=np.uint8)


def _fit(img: Image.Image, size: int, resize: str) -> Image.Image:
    w, h = img.size
    if resize == "stretch":
        return img.resize((size, size), _RESAMPLE)
    if resize == "crop":
        scale = size / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        img = img.resize((nw, nh), _RESAMPLE)
        left, top = (nw - size) // 2, (nh - size) // 2
        return img.crop((left, top, left + size, top + size))
    scale = size / max(w, h)  # pad: keep the aspect ratio, centre on black
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    canvas = Image.new(img.mode, (size, size), 0)
    canvas.paste(img.resize((nw, nh), _RESAMPLE), ((size - nw) // 2, (size - nh) // 2))
    return canvas


def encode_png(pixels: np.ndarray) -> bytes:
    """PNG bytes with no ancillary chunks; the same pixels give the same bytes (fixed zlib level)."""
    img = Image.fromarray(pixels, "L" if pixels.ndim == 2 else "RGB")
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=6, optimize=False)
    return buf.getvalue()


def process_image(
    pixels: np.ndarray | None, *, size: int, mode: str, resize: str, key: str, path: Path | None = None
) -> tuple[bytes, str]:
    """Decode (when ``path`` is given), normalise and encode one image; returns (png_bytes, sha256)."""
    if pixels is None:
        if path is None:
            raise ValueError(f"image {key}: give pixels or a path")
        pixels = decode_file(path, key=key)
    png = encode_png(normalise(pixels, size=size, mode=mode, resize=resize, key=key))
    return png, sha256_bytes(png)


def store_png(images_root: Path, png: bytes, sha: str) -> str:
    """Write ``png`` once under ``images_root/<sha[:2]>/<sha>.png``; return the path relative to the dataset
    root (``images/ab/abcd....png``). Written through a temporary name and renamed, so concurrent writers of
    the same content never leave a partial file."""
    folder = images_root / sha[:2]
    target = folder / f"{sha}.png"
    if not target.exists():
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{sha}.{os.getpid()}.{id(png):x}.tmp"
        tmp.write_bytes(png)
        tmp.replace(target)
    return f"{images_root.name}/{sha[:2]}/{sha}.png"
