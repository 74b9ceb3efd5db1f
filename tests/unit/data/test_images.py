"""Image decoding and normalisation: resize policies, modes, deterministic metadata-free PNG, clear errors.

.venv/bin/pytest tests/unit/data/test_images.py -q
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from components.data.images import decode_file, encode_png, normalise, process_image
from components.data.sources import DataError


def test_resize_policies() -> None:
    wide = np.full((10, 40), 200, np.uint8)
    pad = normalise(wide, size=20, mode="L", resize="pad")
    assert pad.shape == (20, 20) and pad[0, 10] == 0 and pad[10, 10] == 200  # bars above and below
    assert (normalise(wide, size=20, mode="L", resize="stretch") == 200).all()
    band = np.zeros((10, 40), np.uint8)
    band[:, 17:23] = 200
    crop = normalise(band, size=10, mode="L", resize="crop")  # keeps columns 15..24
    assert crop.shape == (10, 10) and crop[5, 5] == 200 and crop[5, 0] == 0  # the centre survives


def test_modes_and_dtypes() -> None:
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 1] = 255
    assert normalise(rgb, size=8, mode="L", resize="pad").shape == (8, 8)
    grey = normalise(np.eye(8, dtype=np.uint8) * 255, size=8, mode="RGB", resize="pad")
    assert grey.shape == (8, 8, 3) and (grey[..., 0] == grey[..., 2]).all()
    wide16 = normalise(np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000, size=8, mode="L", resize="pad")
    assert wide16.min() == 0 and wide16.max() == 255
    with pytest.raises(DataError, match="shape"):
        normalise(np.zeros((2, 2, 2, 2), np.uint8), size=8, mode="L", resize="pad", key="odd")


def test_png_is_deterministic_and_carries_no_metadata(tmp_path: Path) -> None:
    px = np.random.default_rng(0).integers(0, 255, (32, 32), dtype=np.uint8)
    a, sha_a = process_image(px, size=32, mode="L", resize="pad", key="k")
    b, sha_b = process_image(px.copy(), size=32, mode="L", resize="pad", key="k")
    assert a == b == encode_png(px) and sha_a == sha_b
    for chunk in (b"tEXt", b"iTXt", b"zTXt", b"tIME", b"eXIf", b"iCCP"):
        assert chunk not in a
    # Metadata in a source file does not travel: decode -> encode drops it.
    info = PngImagePlugin.PngInfo()
    info.add_text("Patient", "Doe^Jane")
    Image.fromarray(px).save(tmp_path / "meta.png", pnginfo=info)
    assert (
        b"Doe^Jane" not in process_image(None, size=32, mode="L", resize="pad", key="m", path=tmp_path / "meta.png")[0]
    )


def test_decode_errors_name_the_file(tmp_path: Path) -> None:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    (tmp_path / "cut.jpg").write_bytes(buf.getvalue()[:500])
    (tmp_path / "text.png").write_text("nope")
    for name, words in (("cut.jpg", "truncated"), ("text.png", "not an image"), ("missing.png", "does not exist")):
        with pytest.raises(DataError, match=words) as e:
            decode_file(tmp_path / name, key=f"rec/{name}")
        assert name in str(e.value) and f"rec/{name}" in str(e.value)
    palette = Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).convert("P")
    palette.save(tmp_path / "p.png")
    assert decode_file(tmp_path / "p.png", key="p").shape == (8, 8, 3)
