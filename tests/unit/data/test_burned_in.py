"""Burned-in text (issue 18, DICOM PS3.15 Clean Pixel Data option): which datasets are checked, the offline
detector finds the text burned into pydicom's ultrasound samples, masking removes it (a recogniser reads none of
it back) and leaves every other pixel alone, quarantine leaves the pixels alone, a plain CT stays clean.

    .venv/bin/pytest tests/unit/data/test_burned_in.py -q
"""

from __future__ import annotations

import dataclasses
import io
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset

from components.data import burned_in, deid
from components.data.burned_in import Box, CleanResult, clean_dataset, find_text, mask_text, needs_check

FILES = Path(pydicom.__file__).parent / "data" / "test_files"
RGB_US = FILES / "examples_rgb_color.dcm"  # 240x320 RGB ultrasound, "BAPTIST MED CTR", id, date, times on top
BAPTIST_LINE = (slice(12, 21), slice(9, 86))  # rows, columns of that line in native pixels
BURNED_IN_WORDS = ("BAPTIST", "CTR")


def read(path: Path) -> Dataset:
    return pydicom.dcmread(path)


def reread(ds: Dataset) -> Dataset:
    buf = io.BytesIO()
    ds.save_as(buf)
    return pydicom.dcmread(io.BytesIO(buf.getvalue()))


def box_mask(shape: tuple[int, ...], boxes: list[Box], margin: int = 0) -> np.ndarray:
    out = np.zeros(shape[:2], dtype=bool)
    for b in boxes:
        out[max(0, b.y0 - margin) : b.y1 + margin, max(0, b.x0 - margin) : b.x1 + margin] = True
    return out


@pytest.fixture(scope="module")
def recogniser() -> Any:
    """The full rapidocr pipeline (detection + recognition), used only to prove the masked text is unreadable."""
    from rapidocr_onnxruntime import RapidOCR

    return RapidOCR()


def read_words(engine: Any, pixels: np.ndarray) -> list[tuple[np.ndarray, str]]:
    result, _ = engine(np.ascontiguousarray(pixels[:, :, ::-1]), use_cls=False)  # BGR, as OpenCV reads
    return [(np.asarray(box), str(text).upper()) for box, text, _score in result or []]


# --- which datasets are checked ------------------------------------------------------------------------------------


def dataset(**attrs: Any) -> Dataset:
    ds = Dataset()
    for key, value in attrs.items():
        setattr(ds, key, value)
    return ds


@pytest.mark.parametrize(
    ("attrs", "expected"),
    [
        ({"Modality": "US"}, "no BurnedInAnnotation for modality US"),
        ({"Modality": "US", "BurnedInAnnotation": "NO"}, None),
        ({"Modality": "CT", "BurnedInAnnotation": "YES"}, "BurnedInAnnotation is YES"),
        ({"Modality": "CT", "BurnedInAnnotation": "JOHN DOE"}, "BurnedInAnnotation is neither YES nor NO"),
        ({"Modality": "CT"}, None),
        ({"Modality": "MR", "BurnedInAnnotation": ""}, None),
        ({"Modality": "OT"}, "no BurnedInAnnotation for modality OT"),
        ({"Modality": "ES"}, "no BurnedInAnnotation for modality ES"),
        (
            {"Modality": "CT", "SOPClassUID": "1.2.840.10008.5.1.4.1.1.7"},
            "no BurnedInAnnotation for a secondary capture SOP class",
        ),
        (
            {"Modality": "CT", "SOPClassUID": "1.2.840.10008.5.1.4.1.1.7.4"},
            "no BurnedInAnnotation for a secondary capture SOP class",
        ),
        ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.77"}, None),  # not a .7.x class
        ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.3.1"}, "no BurnedInAnnotation for an ultrasound SOP class"),
        (
            {"Modality": "CT", "ConversionType": "WSD"},
            "no BurnedInAnnotation for a secondary capture (ConversionType WSD)",
        ),
        (
            {"Modality": "CT", "ConversionType": "XY"},
            "no BurnedInAnnotation for a secondary capture (ConversionType present)",
        ),
        (
            {"Modality": "CT", "ImageType": ["DERIVED", "SECONDARY", "SCREEN SAVE"]},
            "no BurnedInAnnotation for ImageType SCREEN SAVE",
        ),
        ({"Modality": "CT", "ImageType": ["DERIVED", "SECONDARY", "MPR"]}, None),
    ],
)
def test_needs_check_rule(attrs: dict[str, Any], expected: str | None) -> None:
    assert needs_check(dataset(**attrs)) == expected


def test_needs_check_samples() -> None:
    assert needs_check(read(RGB_US)) == "no BurnedInAnnotation for modality US"  # no attribute in the file
    ct = read(FILES / "CT_small.dcm")
    assert "BurnedInAnnotation" not in ct
    assert needs_check(ct) is None
    ct.BurnedInAnnotation = "YES"
    assert needs_check(ct) == "BurnedInAnnotation is YES"


# --- the detector and the mask -------------------------------------------------------------------------------------


def test_find_text_finds_the_ultrasound_banner() -> None:
    pixels = read(RGB_US).pixel_array
    boxes = find_text(pixels)
    assert len(boxes) >= 10  # the banner lines, the side markers, the label and the output line
    assert all(isinstance(b, Box) and 0 <= b.x0 < b.x1 <= 320 and 0 <= b.y0 < b.y1 <= 240 for b in boxes)
    assert all(0.5 <= b.score <= 1 for b in boxes)
    assert box_mask(pixels.shape, boxes)[BAPTIST_LINE].mean() >= 0.95
    # the top 55 rows hold the patient banner: both sides are found
    top = [b for b in boxes if b.y1 <= 55]
    assert any(b.x1 <= 100 for b in top) and any(b.x0 >= 240 for b in top)


def test_find_text_rejects_frames_it_cannot_read() -> None:
    with pytest.raises(ValueError, match="8-bit"):
        find_text(np.zeros((32, 32), dtype=np.uint16))
    with pytest.raises(ValueError, match="HxW"):
        find_text(np.zeros((32, 32, 4), dtype=np.uint8))


def test_mask_text_fills_every_frame_and_clips_at_the_edges() -> None:
    frames = np.full((3, 10, 12, 3), 7, dtype=np.uint8)
    out = mask_text(frames, [Box(1, 2, 4, 5, 0.9), Box(10, 8, 12, 10, 0.8)], margin=1)
    assert (frames == 7).all()  # a copy
    expected = np.full((10, 12), 7, dtype=np.uint8)
    expected[1:6, 0:5] = 0
    expected[7:10, 9:12] = 0
    for frame in out:
        assert (frame == expected[:, :, None]).all()
    grey = mask_text(np.full((2, 6, 6), 9, dtype=np.int16), [Box(0, 0, 2, 2, 1.0)], margin=0, fill=-5)
    assert (grey[:, :2, :2] == -5).all() and (grey[:, 2:, :] == 9).all()
    with pytest.raises(ValueError, match="frames"):
        mask_text(np.zeros((6, 6), dtype=np.uint8), [])


# --- whole datasets ------------------------------------------------------------------------------------------------


def test_mask_policy_removes_the_banner(recogniser: Any) -> None:
    ds = read(RGB_US)
    before = ds.pixel_array.copy()
    line = np.ascontiguousarray(before[10:23, 6:90, ::-1])  # the BAPTIST line, BGR: readable before masking
    (text, _score), *_ = recogniser(line, use_det=False, use_cls=False, use_rec=True)[0]
    assert "BAPTIST" in text.upper()

    result = clean_dataset(ds, "mask")
    assert result.action == "masked" and result.boxes >= 10
    assert result.reason.startswith(f"masked {result.boxes} text region(s) in 1 checked frame(s)")
    after_ds = reread(ds)
    after = after_ds.pixel_array
    assert after_ds.PhotometricInterpretation == "RGB" and after.shape == before.shape
    assert after_ds.BurnedInAnnotation == "NO"
    if hasattr(deid, "mark_clean_pixels"):
        assert "113101" in [str(item.CodeValue) for item in after_ds.DeidentificationMethodCodeSequence]

    # everything that changed lies in the text boxes, which are black; the rest is untouched
    changed = (after != before).any(axis=-1)
    masked = box_mask(before.shape, find_text(before), margin=2)
    assert changed.any() and not (changed & ~masked).any()
    assert (after[masked] == 0).all()
    assert (after[BAPTIST_LINE] == 0).all()

    # the second pass finds nothing; the recogniser reads none of the banner and finds no box in the masked area
    assert find_text(after) == []
    for box, text in read_words(recogniser, after):
        assert not any(w in text for w in BURNED_IN_WORDS)
        x0, y0 = np.floor(box.min(axis=0)).astype(int)
        x1, y1 = np.ceil(box.max(axis=0)).astype(int)
        assert masked[y0:y1, x0:x1].mean() < 0.5


def test_quarantine_policy_leaves_the_pixels_alone() -> None:
    ds = read(RGB_US)
    data = bytes(ds.PixelData)
    result = clean_dataset(ds, "quarantine")
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.action = "clean"  # type: ignore[misc]
    assert result.action == "quarantine" and result.boxes >= 10
    assert "no BurnedInAnnotation for modality US" in result.reason and "quarantine" in result.reason
    assert not any(w in result.reason.upper() for w in (*BURNED_IN_WORDS, "MED"))
    assert bytes(ds.PixelData) == data and "BurnedInAnnotation" not in ds


def test_plain_ct_flagged_yes_is_checked_and_clean() -> None:
    ds = read(FILES / "CT_small.dcm")
    ds.BurnedInAnnotation = "YES"
    data = bytes(ds.PixelData)
    result = clean_dataset(ds, "mask")
    assert result == CleanResult("clean", 0, "no text found in 1 checked frame(s) (BurnedInAnnotation is YES)")
    assert bytes(ds.PixelData) == data and ds.BurnedInAnnotation == "YES"


def draw_text(size: tuple[int, int], text: str, font_size: int, at: tuple[int, int]) -> tuple[np.ndarray, tuple]:
    """A mask of ``text`` drawn with Pillow's default font, and its bounding box (x0, y0, x1, y1)."""
    img = Image.new("L", size, 0)
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=font_size)
    draw.text(at, text, fill=255, font=font)
    return np.asarray(img) > 0, draw.textbbox(at, text, font=font)


def test_synthetic_text_on_a_grey_frame_is_found_and_masked() -> None:
    text, (x0, y0, x1, y1) = draw_text((240, 160), "DOE^JANE 0123456", 18, (12, 10))
    frame = np.where(text, 230, np.linspace(20, 90, 240)[None, :]).astype(np.uint8)  # on a gradient
    boxes = find_text(frame)
    assert box_mask(frame.shape, boxes)[y0:y1, x0:x1].mean() >= 0.95
    masked = mask_text(frame[None], boxes)[0]
    assert (masked[text] == 0).all()
    assert find_text(masked) == []


def test_synthetic_text_in_a_ct_is_masked_with_its_darkest_value() -> None:
    ds = read(FILES / "CT_small.dcm")  # MONOCHROME2, signed 16-bit, 128x128
    stored = ds.pixel_array.copy()
    text, (x0, y0, x1, y1) = draw_text((128, 128), "ID 4711", 16, (6, 100))
    ds.set_pixel_data(np.where(text, stored.max(), stored).astype(stored.dtype), "MONOCHROME2", 16)
    ds.BurnedInAnnotation = "YES"
    result = clean_dataset(ds, "mask")
    assert result.action == "masked" and result.boxes >= 1
    after = reread(ds).pixel_array
    assert (after[text] == stored.min()).all()
    assert (after[:90] == stored[:90]).all()  # the anatomy above the text is untouched
    assert clean_dataset(reread(ds), "quarantine").action == "clean"


def test_default_frames_checked_are_first_middle_last(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[np.ndarray] = []

    def fake_find_text(pixels: np.ndarray) -> list[Box]:
        seen.append(pixels)
        return []

    monkeypatch.setattr(burned_in, "find_text", fake_find_text)
    ds = read(FILES / "examples_ybr_color.dcm")  # 30 frames
    frames = ds.pixel_array
    assert (
        clean_dataset(ds, "mask").reason
        == "no text found in 3 checked frame(s) (no BurnedInAnnotation for modality US)"
    )
    assert [int(np.argmin([np.abs(f.astype(int) - s).sum() for f in frames])) for s in seen] == [0, 15, 29]
    seen.clear()
    assert clean_dataset(ds, "mask", frames_to_check=(4, -1, 4)).action == "clean" and len(seen) == 2
    with pytest.raises(ValueError, match="selects no frame"):
        clean_dataset(ds, "mask", frames_to_check=(30,))


def test_multiframe_ybr_cine_is_masked_in_every_frame() -> None:
    ds = read(FILES / "examples_ybr_color.dcm")  # 30-frame JPEG YBR_FULL_422 ultrasound cine
    before = ds.pixel_array.copy()
    result = clean_dataset(ds, "mask", frames_to_check=(-1,))
    assert result.action == "masked" and "1 checked frame(s)" in result.reason
    after_ds = reread(ds)
    after = after_ds.pixel_array
    assert after_ds.PhotometricInterpretation == "RGB" and int(after_ds.NumberOfFrames) == 30
    assert not after_ds.file_meta.TransferSyntaxUID.is_compressed
    changed = (after != before).any(axis=-1)
    assert (changed == changed[0]).all()  # the same regions in every frame, checked or not
    assert (after[:, changed[0]] == 0).all()
    # frame 15 was not checked: the text the detector finds there lies in the masked (now black) regions
    text15 = box_mask(before.shape[1:], find_text(before[15]))
    assert (after[15][text15] == 0).all()
    assert all(text15[b.y0 : b.y1, b.x0 : b.x1].mean() < 0.5 for b in find_text(after[15]))


def test_palette_ultrasound_is_masked_with_its_darkest_palette_entry() -> None:
    from pydicom.pixels import apply_color_lut

    ds = read(FILES / "examples_palette.dcm")  # PALETTE COLOR, banner with a date and a time on top
    before = ds.pixel_array.copy()
    assert clean_dataset(ds, "mask").action == "masked"
    after_ds = reread(ds)
    after = after_ds.pixel_array
    assert after_ds.PhotometricInterpretation == "PALETTE COLOR"
    changed = after != before
    fill = np.unique(after[changed])
    assert len(fill) == 1  # one index, the darkest colour the image uses
    colours = apply_color_lut(np.unique(before), after_ds).astype(int).sum(axis=-1)
    assert apply_color_lut(fill, after_ds).astype(int).sum() == colours.min()
    assert find_text((apply_color_lut(after, after_ds) // 257).astype(np.uint8)) == []


def test_detector_is_silent_and_offline() -> None:
    """In a fresh process: no output on stdout or stderr, and no socket is ever opened."""
    code = f"""
import socket, warnings
def refuse(*args, **kwargs):
    raise AssertionError("network use")
socket.socket.connect = refuse
socket.create_connection = refuse
socket.getaddrinfo = refuse
import pydicom
from components.data.burned_in import clean_dataset
ds = pydicom.dcmread({str(RGB_US)!r})
assert clean_dataset(ds, "quarantine").action == "quarantine"
"""
    root = Path(__file__).resolve().parents[3]
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=root)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout == "" and done.stderr == ""


def test_boxes_are_cached_by_the_frame_content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import components.data.burned_in as burned_in

    frame = np.zeros((64, 160), np.uint8)
    frame[20:30, 10:150:4] = 255  # a dotted line: whatever the detector says, it is said once
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert burned_in._cache_file(frame) is None  # no cache folder named: nothing is written to the home folder
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    first = burned_in.find_text(frame)
    [cached] = list((tmp_path / "medtune" / "burned_in").glob("*.json"))

    def no_detector(arr: np.ndarray) -> list[burned_in.Box]:
        raise AssertionError("the detector ran for a cached frame")

    monkeypatch.setattr(burned_in, "_detect", no_detector)
    assert burned_in.find_text(frame) == first
    frame[0, 0] = 1  # another frame: another key
    with pytest.raises(AssertionError, match="detector ran"):
        burned_in.find_text(frame)
    assert cached.exists()
