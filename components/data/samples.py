"""The embedded DICOM samples: real DICOM files that ship inside the pinned pydicom and pydicom-data packages.

:func:`materialize_embedded` copies a fixed list of them into ``<folder>/dicom/`` byte for byte. They carry
real-looking names and ids in their headers, so a fresh workspace places them in the *intake area*
(``data/intake/dicom``), identified as published, and ``medtune data ingest`` de-identifies them into
``data/raw/dicom`` like any hospital's files (:mod:`components.data.intake`). The files are found by path under the installed packages; nothing is downloaded (pydicom's ``get_testdata_file``
would try the network for files that are not bundled, so it is not used). All of them decode with pydicom 3 and
pylibjpeg, and several carry real-looking PatientName/PatientID values (``CT_small.dcm``: a name, an id),
which the de-identification tests rely on::

    from components.data.samples import materialize_embedded
    materialize_embedded(Path("data/intake"))  # -> [data/intake/dicom/CT_small.dcm, ...]
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

from components.data.sources.base import DataError

# (package, folder inside the package, file name, what it is). About 1.1 MB in all. Left out on purpose:
# examples_palette.dcm and examples_rgb_color.dcm have a patient id, a date and an institution burned into
# their pixels, which no header de-identification can remove.
EMBEDDED_DICOM: tuple[tuple[str, str, str, str], ...] = (
    ("pydicom", "data/test_files", "CT_small.dcm", "CT, 128x128, explicit VR, rescale slope/intercept"),
    ("pydicom", "data/test_files", "MR_small.dcm", "MR, 64x64, window from the header"),
    ("pydicom", "data/test_files", "693_J2KI.dcm", "CT head, 512x512, JPEG 2000 (needs pylibjpeg)"),
    ("pydicom", "data/test_files", "examples_overlay.dcm", "MR abdomen, 484x300, with overlay planes"),
    ("pydicom", "data/test_files", "examples_ybr_color.dcm", "ultrasound (echo), 30 frames, YBR_FULL_422 JPEG"),
    ("pydicom", "data/test_files", "JPEG2000.dcm", "nuclear medicine whole body, JPEG 2000 ('other')"),
    ("data_store", "data", "RG3_J2KI.dcm", "CR (X-ray) extremity, MONOCHROME1, JPEG 2000"),
    ("data_store", "data", "emri_small_jpeg_ls_lossless.dcm", "MR head, 10 frames, JPEG-LS lossless"),
    ("data_store", "data", "explicit_VR-UN.dcm", "CT pancreas, 512x512, JPEG 2000 lossless"),
    ("data_store", "data", "color-pl.dcm", "ultrasound colour Doppler, planar RGB"),
)
_PACKAGES = {"pydicom": "pydicom", "data_store": "pydicom-data"}


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)  # locates without importing
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            f"the embedded DICOM samples need the package {_PACKAGES[package]!r}, which is not installed "
            f"(pip install {_PACKAGES[package]})"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def embedded_sources() -> list[Path]:
    """Paths of the embedded sample files inside the installed packages (DataError naming any missing one)."""
    out = []
    for package, folder, name, _ in EMBEDDED_DICOM:
        path = _package_dir(package) / folder / name
        if not path.is_file():
            raise DataError(
                f"embedded DICOM sample {name} is missing from {path.parent}; reinstall {_PACKAGES[package]}"
            )
        out.append(path)
    return out


def materialize_embedded(folder: Path) -> list[Path]:
    """Copy the embedded samples into ``folder/dicom/`` (byte-identical; a file already equal is left
    alone, so its modification time stays unchanged). Returns the destination paths, sorted."""
    dest_dir = Path(folder) / "dicom"
    dest_dir.mkdir(parents=True, exist_ok=True)
    out = []
    for src in embedded_sources():
        dest = dest_dir / src.name
        if not (dest.is_file() and dest.read_bytes() == src.read_bytes()):
            tmp = dest.with_name(f".{dest.name}.tmp")
            shutil.copyfile(src, tmp)
            tmp.replace(dest)
        out.append(dest)
    return sorted(out)
