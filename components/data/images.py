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
import time
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from components.data.sources.base import DataError

if TYPE_CHECKING:
    from components.data.sources.base import SourceImage

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
    naming ``key`` and the file. A DICOM file (``DICM`` preamble) goes through :func:`decode_dicom`."""
    if _is_dicom(path):
        return decode_dicom(path, key=key)
    try:
        with Image.open(path) as img:
            img.verify()  # structure and checksums (catches a PNG cut short after its pixel data)
        with Image.open(path) as img:
            img.load()  # the full decode: a truncated file fails here, not later
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


def decode_dicom(path: Path, *, key: str) -> np.ndarray:
    """Decode a DICOM file's pixels (see :func:`dicom_pixels`). Errors name ``key`` only: a DICOM file's own
    name may carry patient data, and the source hands over a masked key."""
    import pydicom

    try:
        return dicom_pixels(pydicom.dcmread(path))
    except Exception as e:  # pydicom and the pylibjpeg plugins raise many kinds; all mean "cannot decode"
        raise DataError(f"image {key}: cannot decode DICOM pixel data ({error_detail(e)})") from None


def error_detail(e: BaseException) -> str:
    """An exception as one short line for a quarantine reason; the message is dropped if it looks like PHI."""
    from components.data.phi import find_phi

    text = " ".join(str(e).split())[:200]
    return f"{type(e).__name__}: {text}" if text and not find_phi(text) else type(e).__name__


def _is_dicom(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(132)[128:] == b"DICM"
    except OSError:
        return False


def window_to_uint8(values: np.ndarray, ds: Any) -> np.ndarray:
    """Greyscale to uint8: DICOM linear window (PS3.3 C.11.2.1.2) from the header, else a percentile window."""
    from pydicom.multival import MultiValue

    def first(value: Any) -> float:
        return float(value[0] if isinstance(value, MultiValue | list | tuple) else value)

    try:
        c, w = first(ds.get("WindowCenter")), first(ds.get("WindowWidth"))
    except (TypeError, ValueError, IndexError):
        c = w = float("nan")
    if not (np.isfinite(c) and np.isfinite(w) and w >= 1):
        lo, hi = np.percentile(values, [0.5, 99.5])
        c, w = (lo + hi) / 2, max(float(hi - lo), 1.0)
    out = np.clip((values - (c - 0.5)) / (w - 1 if w > 1 else 1) + 0.5, 0.0, 1.0)
    return np.round(out * 255).astype(np.uint8)


def dicom_pixels(ds: Any) -> np.ndarray:
    """Decode a dataset's pixels to uint8 HxW or HxWx3 (middle frame of a multi-frame image)."""
    from pydicom.pixels import apply_color_lut, apply_rescale, pixel_array

    frames = int(ds.get("NumberOfFrames", 1) or 1)
    arr = pixel_array(ds, index=frames // 2) if frames > 1 else ds.pixel_array
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
    if arr.ndim == 3 and arr.shape[2] in (3, 4):  # colour (pydicom has already turned YBR into RGB)
        arr = arr[:, :, :3]
        if arr.dtype != np.uint8:
            top = float(arr.max()) or 1.0
            arr = np.round(arr.astype(np.float64) / top * 255)
        return arr.astype(np.uint8)
    if arr.ndim != 2:
        raise ValueError(f"unexpected pixel array shape {arr.shape}")
    values = apply_rescale(arr, ds).astype(np.float64)
    out = window_to_uint8(values, ds)
    return 255 - out if photometric == "MONOCHROME1" else out


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


# --- image jobs: the unit of work the builder hands to its (process pool) workers -----------------------------

ImageJob = tuple[str, np.ndarray | None, Path | None]  # (key for messages, pixels, file)


def prepare_job(image: SourceImage, jobs: list[ImageJob], index: dict[Any, int], ids: dict[int, Any]) -> int:
    """Index of the job that produces ``image``, adding one when no earlier job has the same file or pixels.

    ``index`` maps a job key to its position; ``ids`` memoises pixel hashes per array object (sources reuse
    one array for many questions about the same image).
    """
    if image.path is not None:
        key: Any = ("path", str(image.path))
    else:
        arr = image.pixels
        assert arr is not None
        key = ids.get(id(arr))
        if key is None:
            data = np.ascontiguousarray(arr)
            key = ("px", data.shape, str(data.dtype), hashlib.blake2b(data.tobytes(), digest_size=20).hexdigest())
            ids[id(arr)] = key
    if key not in index:
        index[key] = len(jobs)
        jobs.append((image.key, image.pixels, image.path))
    return index[key]


def run_image_job(job: ImageJob, *, images: Path, size: int, mode: str, resize: str) -> tuple[str, str]:
    """Process and store one image; returns (sha256, "") or ("", error message naming the image and file)."""
    key, pixels, path = job
    try:
        png, sha = process_image(pixels, size=size, mode=mode, resize=resize, key=key, path=path)
    except DataError as e:
        return "", str(e)
    except Exception as e:  # a decoder bug must not kill the pool: report it against the image
        where = f" ({path})" if path is not None else ""
        return "", f"image {key}{where}: {type(e).__name__}: {e}"
    store_png(images, png, sha)
    return sha, ""


def run_image_jobs(
    jobs: list[ImageJob],
    images: Path,
    *,
    size: int,
    mode: str,
    resize: str,
    workers: int = 1,
    tick: Callable[[str, int, int | None], None] | None = None,
) -> list[tuple[str, str]]:
    """Run every job (in order; a process pool when ``workers > 1``, with identical results); returns
    (sha256, error) per job. ``tick("images", done, total)`` reports progress."""
    images.mkdir(parents=True, exist_ok=True)
    fn = partial(run_image_job, images=images, size=size, mode=mode, resize=resize)
    results: list[tuple[str, str]] = []

    def done(result: tuple[str, str]) -> None:
        results.append(result)
        if tick is not None and (len(results) % 50 == 0 or len(results) == len(jobs)):
            tick("images", len(results), len(jobs))

    if workers <= 1 or len(jobs) < 2:
        for job in jobs:
            done(fn(job))
        return results
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    # forkserver, not fork: the caller may run threads (a Prefect flow); the server pre-imports this module
    # once, so each worker starts without re-importing numpy, Pillow and pydantic.
    ctx = mp.get_context("forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn")
    if ctx.get_start_method() == "forkserver":
        ctx.set_forkserver_preload([__name__])
    chunk = max(1, min(64, len(jobs) // (workers * 4)))
    try:
        with ProcessPoolExecutor(
            max_workers=workers, mp_context=ctx, initializer=_exit_with_parent, initargs=(os.getpid(),)
        ) as pool:
            for result in pool.map(fn, jobs, chunksize=chunk):
                done(result)
    except BrokenProcessPool as e:  # e.g. a __main__ the workers cannot re-import: same work, one process
        warnings.warn(f"image workers failed to start ({e}); processing images in this process", stacklevel=2)
        return run_image_jobs(jobs, images, size=size, mode=mode, resize=resize, workers=1, tick=tick)
    return results


def _exit_with_parent(pid: int, every_s: float = 0.5) -> None:
    """Worker initializer: a daemon thread ends the worker once the build process is gone, so a build killed
    with SIGKILL (no clean-up runs) leaves no image workers behind. The worker's own parent is the fork server,
    not the build, so the build's pid is watched directly."""
    import threading

    def watch() -> None:
        while True:
            time.sleep(every_s)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                os._exit(1)
            except PermissionError:
                pass

    threading.Thread(target=watch, name="medtune-parent-watch", daemon=True).start()


def prune_images(images: Path, stored: set[str]) -> None:
    """Remove image files no record refers to (``stored`` holds ``images/ab/<sha>.png`` paths)."""
    for path in sorted(images.glob("*/*.png")):
        if f"{images.name}/{path.parent.name}/{path.name}" not in stored:
            path.unlink()
    for folder in images.iterdir():
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
