"""Burned-in text in DICOM pixel data: the Clean Pixel Data option of DICOM PS3.15 Annex E (E.3.1), issue 18.

Header de-identification (:mod:`components.data.deid`) cannot reach text drawn into the pixels (ultrasound
banners, screenshots of a workstation, a dose report saved as an image). :func:`needs_check` says which
datasets must be looked at, :func:`find_text` runs an offline text detector (rapidocr-onnxruntime's PP-OCRv4
detection model, shipped inside the wheel: nothing is downloaded) and :func:`clean_dataset` applies the
``data.deid.burned_in`` policy: ``mask`` blacks out every text region in every frame, ``quarantine`` refuses the
image. Only the detector runs, never the recogniser: what the text says is never read, returned, logged or
stored; results carry boxes and counts only::

    from components.data.burned_in import clean_dataset, needs_check
    if needs_check(ds):
        result = clean_dataset(ds, "mask")  # result.action: "clean" | "masked" | "quarantine"

Detector figures (examples_rgb_color.dcm, a 240x320 ultrasound frame, searched at 736x981): 0.2-0.25 s per frame
on 2 idle cores, about 0.3 s with the single onnxruntime thread of a pool worker; every text line found at native
size, 0.83 of them on a 224 px copy, 0.61 (coarse merged boxes) on a 64 px copy.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import multiprocessing
import os
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

# --- which datasets must be checked ---------------------------------------------------------------------------

# Modalities whose images commonly carry burned-in annotation when the header does not say (issue 18: "US,
# secondary capture, OT, screenshots"): ultrasound (US, IVUS), Other (OT), the non-standard but common SC,
# external-camera photography (XC) and endoscopy (ES). Slide microscopy (SM) is left out as a modality (its
# tiled pyramids are huge and text-free); its label and overview images are caught by ImageType below.
BURNED_IN_MODALITIES = frozenset({"US", "IVUS", "OT", "SC", "XC", "ES"})
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"  # and every 1.2.840.10008.5.1.4.1.1.7.x (multi-frame SC)
ULTRASOUND_SOP_CLASSES = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.6.1",  # US Image Storage
        "1.2.840.10008.5.1.4.1.1.3.1",  # US Multi-frame Image Storage
        "1.2.840.10008.5.1.4.1.1.6",  # US Image Storage (retired)
        "1.2.840.10008.5.1.4.1.1.3",  # US Multi-frame Image Storage (retired)
    }
)
# ConversionType (0008,0064), SC Equipment module (PS3.3 C.8.6.1): its presence marks a secondary capture.
CONVERSION_TYPES = frozenset({"DV", "DI", "DF", "WSD", "SD", "SI", "DRW", "SYN"})
# ImageType values vendors use for screen captures and report pages, and whole-slide label/overview images.
SCREEN_IMAGE_TYPES = frozenset(
    {"SCREEN SAVE", "SCREENSHOT", "DOSE_INFO", "DOSE INFO", "CSA REPORT", "LABEL", "OVERVIEW"}
)


def needs_check(ds: Any) -> str | None:
    """Why the pixels of ``ds`` must be checked for burned-in text, or None.

    The rule (PS3.15 Annex E, E.3.1 Clean Pixel Data option; BurnedInAnnotation (0028,0301), PS3.3 C.7.6.1.1.7):

    1. BurnedInAnnotation ``YES`` -> check; ``NO`` -> no check (the header is trusted); any other non-empty
       value -> check.
    2. Absent or empty -> check when the Modality is in :data:`BURNED_IN_MODALITIES`, the SOP Class is a
       Secondary Capture class (1.2.840.10008.5.1.4.1.1.7 and .7.x) or an ultrasound class, ConversionType is
       present (a secondary capture), or ImageType holds one of :data:`SCREEN_IMAGE_TYPES`.
    3. Otherwise (CT, MR, CR, ... with no attribute) -> no check.

    The reason names only constants (a modality from the set, a defined term), never a value read from a free
    text attribute.
    """
    flag = _text(ds.get("BurnedInAnnotation")).upper()
    if flag == "YES":
        return "BurnedInAnnotation is YES"
    if flag == "NO":
        return None
    if flag:
        return "BurnedInAnnotation is neither YES nor NO"
    modality = _text(ds.get("Modality")).upper()
    if modality in BURNED_IN_MODALITIES:
        return f"no BurnedInAnnotation for modality {modality}"
    sop = _text(ds.get("SOPClassUID")) or _text(getattr(ds, "file_meta", {}).get("MediaStorageSOPClassUID"))
    if sop == SECONDARY_CAPTURE or sop.startswith(SECONDARY_CAPTURE + "."):
        return "no BurnedInAnnotation for a secondary capture SOP class"
    if sop in ULTRASOUND_SOP_CLASSES:
        return "no BurnedInAnnotation for an ultrasound SOP class"
    conversion = _text(ds.get("ConversionType")).upper()
    if conversion:
        shown = conversion if conversion in CONVERSION_TYPES else "present"
        return f"no BurnedInAnnotation for a secondary capture (ConversionType {shown})"
    image_type = ds.get("ImageType")
    values = [image_type] if isinstance(image_type, str) else list(image_type or [])
    for value in values:
        if _text(value).upper() in SCREEN_IMAGE_TYPES:
            return f"no BurnedInAnnotation for ImageType {_text(value).upper()}"
    return None


def _text(value: Any) -> str:
    return "" if value is None else str(value).strip()


# --- the detector ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Box:
    """A text region in pixel coordinates: columns ``x0 .. x1-1``, rows ``y0 .. y1-1`` (ends exclusive)."""

    x0: int
    y0: int
    x1: int
    y1: int
    score: float


# rapidocr's own settings (config.yaml, Det and Global): the model works with the short side at 736 px and the
# long side at most 2000 px. Resizing here (bicubic) rather than inside rapidocr (bilinear) raised the share of
# examples_rgb_color.dcm's text lines found on a 224 px copy from 0.78 to 0.83 (native: 1.00; 64 px: 0.61 both).
_SHORT_SIDE = 736
_LONG_SIDE = 2000
_DET_SETTINGS = {
    "limit_side_len": _SHORT_SIDE,
    "limit_type": "min",
    "mean": [0.5, 0.5, 0.5],
    "std": [0.5, 0.5, 0.5],
    "thresh": 0.3,
    "box_thresh": 0.5,
    "max_candidates": 1000,
    "unclip_ratio": 1.6,
    "use_dilation": True,
    "score_mode": "fast",
    "use_cuda": False,
    "use_dml": False,
}
# Upscaled anatomy and colour-flow blobs score as text (CT_small, MR_small, two NM studies, a Doppler region among
# pydicom's samples). They are thick and compact: a region counts as text only when it is thin (its short side at
# most MAX_TEXT_THICKNESS of the frame's short side, or TEXT_THICKNESS_FLOOR pixels: fonts have absolute sizes) or
# line-shaped (at least TEXT_LINE_RATIO times longer than thick: a line of several characters, any font size). The
# sample annotation lines are 4-6.3 % of the short side; the blobs 13-52 % and at most 3.4 times longer than thick.
MAX_TEXT_THICKNESS = 0.10
TEXT_THICKNESS_FLOOR = 16
TEXT_LINE_RATIO = 4.0
# Masking the text the detector found first can reveal fainter text next to it (the "A"/"B" markers beside the
# TIS column of examples_ybr_color.dcm appear only once the column is gone): mask, search again, up to this many
# times; text still found after the last round quarantines the image.
MASK_ROUNDS = 3
_CACHE_VERSION = 1  # bump when find_text's filtering changes in a way its settings above do not show
_LOCK = threading.Lock()
_DETECTOR: Any = None


def _detector() -> Any:
    """The process's one detection model, created on first use (onnxruntime sessions are thread-safe to run).

    Only the detection model is loaded (not the recogniser). One onnxruntime thread in a pool worker, so N
    workers use N cores; onnxruntime's default elsewhere. rapidocr's loggers print to stderr with their own
    handler: they are raised to ERROR so nothing reaches the console.
    """
    global _DETECTOR
    with _LOCK:
        if _DETECTOR is None:
            import onnxruntime
            import rapidocr_onnxruntime
            from rapidocr_onnxruntime.ch_ppocr_det import TextDetector

            onnxruntime.set_default_logger_severity(3)  # errors only
            model = Path(rapidocr_onnxruntime.__file__).parent / "models" / "ch_PP-OCRv4_det_infer.onnx"
            threads = 1 if multiprocessing.parent_process() is not None else -1
            config = {**_DET_SETTINGS, "model_path": str(model), "intra_op_num_threads": threads}
            config["inter_op_num_threads"] = -1
            _DETECTOR = TextDetector(config)
            for name in ("RapidOCR", "OrtInferSession"):
                logging.getLogger(name).setLevel(logging.ERROR)
        return _DETECTOR


def _cache_file(arr: np.ndarray) -> Path | None:
    """Where the boxes of this exact frame are kept: ``$XDG_CACHE_HOME/medtune/burned_in/<sha256>.json`` (medtune
    points XDG_CACHE_HOME into the workspace's state folder), keyed by the pixels, their shape, the detector's
    settings and its package version; None when XDG_CACHE_HOME is unset (nothing is written to the home folder)."""
    root = os.environ.get("XDG_CACHE_HOME")
    if not root:
        return None
    from importlib.metadata import version

    digest = hashlib.sha256(arr.tobytes())
    filters = (MAX_TEXT_THICKNESS, TEXT_THICKNESS_FLOOR, TEXT_LINE_RATIO, _CACHE_VERSION)
    detector = (_SHORT_SIDE, _LONG_SIDE, sorted(_DET_SETTINGS.items()), version("rapidocr-onnxruntime"))
    settings = (arr.shape, str(arr.dtype), filters, detector)
    digest.update(repr(settings).encode())
    return Path(root) / "medtune" / "burned_in" / f"{digest.hexdigest()}.json"


def find_text(pixels: np.ndarray) -> list[Box]:
    """Text regions in one 8-bit frame (HxW grey, HxWx1 or HxWx3 RGB), in the frame's pixel coordinates; thick
    compact regions are dropped as anatomy (see :data:`MAX_TEXT_THICKNESS`). The boxes (coordinates and scores,
    never text) are cached by the frame's content (:func:`_cache_file`): re-ingesting after a code change, or the
    same sample files in a new workspace, does not run the detector again."""
    arr = np.asarray(pixels)
    if arr.dtype != np.uint8:
        raise ValueError(f"find_text expects an 8-bit frame, got dtype {arr.dtype} (render it to 8 bits first)")
    cache = _cache_file(arr)
    if cache is not None:
        try:
            return [Box(*row) for row in json.loads(cache.read_text())]
        except (OSError, ValueError, TypeError):
            pass  # absent or damaged: detect again
    boxes = _detect(arr)
    if cache is not None:
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps([[b.x0, b.y0, b.x1, b.y1, b.score] for b in boxes]))
            tmp.replace(cache)
        except OSError:
            pass  # a read-only cache folder: no caching
    return boxes


def _detect(arr: np.ndarray) -> list[Box]:
    import cv2

    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim == 2:
        bgr = np.repeat(arr[:, :, None], 3, axis=2)
    elif arr.ndim == 3 and arr.shape[2] == 3:
        bgr = np.ascontiguousarray(arr[:, :, ::-1])  # the model was trained on OpenCV's BGR order
    else:
        raise ValueError(f"find_text expects HxW or HxWx3 pixels, got shape {arr.shape}")
    h, w = arr.shape[:2]
    scale = min(_SHORT_SIDE / min(h, w), _LONG_SIDE / max(h, w))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    if size != (w, h):
        bgr = cv2.resize(bgr, size, interpolation=cv2.INTER_CUBIC if scale > 1 else cv2.INTER_AREA)
    det = _detector()
    # TextDetector.__call__ drops the box scores; these are its three steps (rapidocr-onnxruntime 1.4.x).
    batch = det.get_preprocess(max(bgr.shape[:2]))(bgr)
    prob = det.infer(batch)[0]
    polys, scores = det.postprocess_op(prob, bgr.shape[:2])
    sx, sy = size[0] / w, size[1] / h
    thickness_limit = max(MAX_TEXT_THICKNESS * min(h, w), TEXT_THICKNESS_FLOOR)
    boxes = []
    for poly, score in zip(polys, scores, strict=True):
        xs, ys = poly[:, 0] / sx, poly[:, 1] / sy
        x0, y0 = max(0, math.floor(xs.min())), max(0, math.floor(ys.min()))
        x1, y1 = min(w, math.floor(xs.max()) + 1), min(h, math.floor(ys.max()) + 1)
        thick, long = sorted((x1 - x0, y1 - y0))
        if thick > 0 and (thick <= thickness_limit or long >= TEXT_LINE_RATIO * thick):
            boxes.append(Box(x0, y0, x1, y1, round(float(score), 4)))
    return sorted(boxes, key=lambda b: (b.y0, b.x0))


def mask_text(frames: np.ndarray, boxes: Iterable[Box], margin: int = 2, *, fill: float = 0) -> np.ndarray:
    """A copy of ``frames`` (``(n, rows, columns)`` or ``(n, rows, columns, samples)``) with every box, grown by
    ``margin`` pixels, set to ``fill`` in every frame: burned-in text sits at the same place in each frame of a
    cine loop, so a region found in one checked frame is removed from all of them."""
    out = np.array(frames, copy=True)
    if out.ndim not in (3, 4):
        raise ValueError(f"mask_text expects (frames, rows, columns[, samples]), got shape {out.shape}")
    rows, cols = out.shape[1], out.shape[2]
    for b in boxes:
        y0, y1 = max(0, b.y0 - margin), min(rows, b.y1 + margin)
        x0, x1 = max(0, b.x0 - margin), min(cols, b.x1 + margin)
        out[:, y0:y1, x0:x1] = fill
    return out


# --- a whole dataset ------------------------------------------------------------------------------------------------

Action = Literal["clean", "masked", "quarantine"]


@dataclass(frozen=True)
class CleanResult:
    """What :func:`clean_dataset` did: ``action``, how many text regions it found, and why (no PHI)."""

    action: Action
    boxes: int
    reason: str


def clean_dataset(
    ds: Any, policy: Literal["mask", "quarantine"], *, frames_to_check: Sequence[int] | None = None
) -> CleanResult:
    """Check ``ds`` for burned-in text and apply ``policy`` (the caller decides *whether*, see :func:`needs_check`).

    ``frames_to_check`` are frame indices (negative counts from the end); the default is the first, middle and
    last frame. Each is rendered to 8 bits as a reader shows it (colour as RGB, YBR already converted by pydicom;
    palette through its LUT; greyscale through the header window, else a percentile window) and searched with
    :func:`find_text`. Then:

    * no text: ``clean``, ``ds`` untouched;
    * text, ``quarantine``: ``quarantine``, ``ds`` untouched;
    * text, ``mask``: every region is set to the value that shows darkest (0 for colour, the darkest stored
      value present for greyscale and palette) in every frame; the checked frames are searched again, new regions
      added and masked, up to :data:`MASK_ROUNDS` times. When a search finds nothing, the pixel data is replaced
      (uncompressed; any colour source becomes RGB; frame count kept; SOP Instance UID kept, since
      de-identification re-maps every UID and a random new one would break byte-identical rebuilds) and the
      dataset is marked clean (``deid.mark_clean_pixels``); otherwise ``quarantine``, ``ds`` untouched.

    A dataset whose pixels cannot be decoded is quarantined. Reasons hold counts and constants only.
    """
    from components.data.images import error_detail

    if policy not in ("mask", "quarantine"):
        raise ValueError(f"burned-in policy must be 'mask' or 'quarantine', got {policy!r}")
    why = needs_check(ds) or "check requested"
    n = int(ds.get("NumberOfFrames", 1) or 1)
    wanted = (0, n // 2, n - 1) if frames_to_check is None else frames_to_check
    indices = sorted({i % n for i in wanted if -n <= i < n})
    if not indices:
        raise ValueError(f"frames_to_check {tuple(wanted)} selects no frame of {n}")
    try:
        boxes = _unique(b for i in indices for b in find_text(_render(_frame(ds, i, n), ds)))
    except Exception as e:  # pydicom and its decoder plugins raise many kinds; all mean "cannot decode"
        return CleanResult("quarantine", 0, f"burned-in check: cannot decode pixel data ({error_detail(e)})")

    def found(count: int) -> str:
        return f"{count} text region(s) in {len(indices)} checked frame(s) ({why})"

    if not boxes:
        return CleanResult("clean", 0, f"no text found in {len(indices)} checked frame(s) ({why})")
    if policy == "quarantine":
        return CleanResult("quarantine", len(boxes), f"burned-in text: {found(len(boxes))}; policy is quarantine")
    try:
        stored, photometric, bits, fill = _stored_frames(ds, n)
        for _ in range(MASK_ROUNDS):
            masked = mask_text(stored, boxes, fill=fill)
            more = _unique(b for i in indices for b in find_text(_render(masked[i], ds)))
            if not more:
                break
            boxes = _unique([*boxes, *more])
        else:
            reason = f"burned-in text: {found(len(boxes))}; text remained after {MASK_ROUNDS} masking rounds"
            return CleanResult("quarantine", len(boxes), reason)
        for tag in (0x7FE00001, 0x7FE00002):  # (extended) offset tables belong to the old encapsulated data
            if tag in ds:
                del ds[tag]
        ds.set_pixel_data(masked if n > 1 else masked[0], photometric, bits, generate_instance_uid=False)
    except Exception as e:  # e.g. 32-bit or float pixels, big-endian data: set_pixel_data refuses them
        reason = f"burned-in text: {found(len(boxes))}; cannot mask ({error_detail(e)})"
        return CleanResult("quarantine", len(boxes), reason)
    _mark_clean(ds)
    return CleanResult("masked", len(boxes), f"masked {found(len(boxes))}")


def _unique(boxes: Iterable[Box]) -> list[Box]:
    return sorted(set(boxes), key=lambda b: (b.y0, b.x0, b.y1, b.x1, b.score))


def _frame(ds: Any, index: int, n: int) -> np.ndarray:
    from pydicom.pixels import pixel_array

    return pixel_array(ds, index=index) if n > 1 else np.asarray(ds.pixel_array)


def _photometric(ds: Any) -> str:
    return _text(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()


def _render(frame: np.ndarray, ds: Any) -> np.ndarray:
    """One decoded frame as the uint8 image a reader would see (see :func:`clean_dataset`)."""
    from pydicom.pixels import apply_color_lut, apply_rescale

    from components.data.images import window_to_uint8

    photometric = _photometric(ds)
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(frame, ds)
        return _scale_to_uint8(rgb, 8 * rgb.dtype.itemsize)
    if frame.ndim == 3:  # colour: pydicom has already turned YBR into RGB
        return _scale_to_uint8(frame[:, :, :3], int(ds.get("BitsStored", 8) or 8))
    out = window_to_uint8(apply_rescale(frame, ds).astype(np.float64), ds)
    return 255 - out if photometric == "MONOCHROME1" else out


def _scale_to_uint8(arr: np.ndarray, bits: int) -> np.ndarray:
    if arr.dtype == np.uint8 and bits == 8:
        return arr
    top = float(2**bits - 1)
    return np.round(np.clip(arr.astype(np.float64), 0, top) / top * 255).astype(np.uint8)


def _stored_frames(ds: Any, n: int) -> tuple[np.ndarray, str, int, float]:
    """All frames as stored values ``(n, rows, cols[, 3])``, the photometric interpretation and bits to write
    them back with, and the fill value that shows black."""
    from pydicom.pixels import apply_color_lut

    arr = np.asarray(ds.pixel_array)
    frames = arr if n > 1 else arr[None]
    photometric = _photometric(ds)
    bits = min(int(ds.get("BitsStored", 8 * arr.dtype.itemsize)), 8 * arr.dtype.itemsize)
    if frames.ndim == 4:  # colour (YBR decoded to RGB): written back as RGB
        return frames, "RGB", bits, 0
    if photometric == "PALETTE COLOR":  # the index of the darkest colour the image uses
        values = np.unique(frames)
        colours = apply_color_lut(values, ds).astype(np.float64)
        return frames, photometric, bits, float(values[int(np.argmin(colours.sum(axis=-1)))])
    darkest = frames.max() if photometric == "MONOCHROME1" else frames.min()
    return frames, photometric, bits, float(darkest)


def _mark_clean(ds: Any) -> None:
    """Record the Clean Pixel Data option through the de-identification module when it offers that."""
    from components.data import deid

    mark = getattr(deid, "mark_clean_pixels", None)
    if mark is not None:
        mark(ds)
    else:
        ds.BurnedInAnnotation = "NO"
