"""Helpers for the data-stage tests: a DICOM writer with known PHI, an in-memory test source kind, a build
with the default policy, and tree snapshots."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from components.data.build import BuildReport, build_dataset
from components.data.sources.base import Quarantined, SourceContext, SourceSample

KEY = b"unit-test-deid-key-0123456789abcdef"

#: What the test DICOM carries; none of it may reach an output file.
PHI = {
    "PatientName": "Doe^Jane",
    "PatientID": "MRN-998877",
    "PatientBirthDate": "19800101",
    "InstitutionName": "Springfield General Hospital",
    "ReferringPhysicianName": "House^Gregory",
    "AccessionNumber": "ACC-424242",
    "OperatorsName": "Tech^Tina",
    "StudyDate": "20240315",
}
PHI_STRINGS = ("Doe^Jane", "Jane", "MRN-998877", "998877", "19800101", "Springfield", "House^Gregory", "ACC-424242")


def write_dicom(
    path: Path,
    pixels: np.ndarray | None = None,
    *,
    modality: str = "CT",
    photometric: str = "MONOCHROME2",
    **attrs: Any,
) -> Path:
    """Write a small, valid DICOM file (explicit VR little endian) with the given header attributes."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[str(path)])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[str(path), "study"])
    ds.Modality = modality
    for name, value in attrs.items():
        setattr(ds, name, value)
    if pixels is not None:
        arr = np.asarray(pixels)
        frames = arr.shape[0] if arr.ndim == 3 and photometric.startswith("MONO") else 1
        if frames > 1:
            ds.NumberOfFrames = frames
        ds.Rows, ds.Columns = arr.shape[-2:] if photometric.startswith("MONO") else arr.shape[:2]
        ds.SamplesPerPixel = 1 if photometric.startswith("MONO") else 3
        if ds.SamplesPerPixel == 3:
            ds.PlanarConfiguration = 0
        ds.PhotometricInterpretation = photometric
        bits = 8 if arr.dtype == np.uint8 else 16
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, bits, bits - 1
        ds.PixelRepresentation = 1 if arr.dtype == np.int16 else 0
        ds.PixelData = arr.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def phi_ct(path: Path, **extra: Any) -> Path:
    """A CT slice carrying every value in PHI (plus a private tag with the name, and a nested sequence)."""
    from pydicom.dataset import Dataset

    yy, xx = np.mgrid[0:48, 0:48]
    hu = np.where((yy - 24) ** 2 + (xx - 24) ** 2 < 300, 1024 + 60, 1024 - 100).astype(np.uint16)
    item = Dataset()
    item.PerformingPhysicianName = "Doe^Jane"  # removed by the profile
    item.PersonName = "Doe^Jane"  # not listed: emptied by the person-name sweep
    attrs = {**PHI, "RescaleSlope": 1, "RescaleIntercept": -1024, "WindowCenter": 40, "WindowWidth": 400}
    path = write_dicom(path, hu, BodyPartExamined="ABDOMEN", **{**attrs, **extra})
    import pydicom

    ds = pydicom.dcmread(path)
    ds.add_new(0x00290010, "LO", "ACME")  # private creator + a private element holding PHI
    ds.add_new(0x00291010, "LO", "Doe^Jane MRN-998877")
    ds.ProcedureCodeSequence = [item]
    ds.save_as(path)
    return path


# --- an in-memory test source: tests hand it a factory of samples -------------------------------------------

FACTORIES: dict[str, Callable[[SourceContext], Iterable[SourceSample | Quarantined]]] = {}


class ListSourceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["test_list"] = Field("test_list", description="In-memory samples for tests.")
    factory: str = Field(description="Name of the factory in FACTORIES.")


def read_list(cfg: ListSourceConfig, ctx: SourceContext) -> Iterator[SourceSample | Quarantined]:
    yield from FACTORIES[cfg.factory](ctx)


def build(sources: dict[str, BaseModel], out: Path, ws: Path, **kw: Any) -> BuildReport:
    """build_dataset with the default policy; keyword arguments override it."""
    args: dict[str, Any] = {
        "workspace": ws,
        "image_size": 64,
        "image_mode": "L",
        "resize": "pad",
        "split_ratios": (0.8, 0.1, 0.1),
        "split_seed": 0,
        "on_error": "quarantine",
        "workers": 1,
        "deid_key": KEY,
        "seed": 0,
        "force": True,
    }
    args.update(kw)
    return build_dataset(sources, out, **args)


def tree_bytes(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path -> bytes)."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def sample(uid: str, pixels: np.ndarray | None = None, *, path: Path | None = None, **kw: Any) -> SourceSample:
    """A comprehension sample for the test source (override any field with a keyword; ``image=`` a list of
    SourceImages or None gives a multi-image or text-only sample)."""
    from components.data.sources.base import SourceImage

    image = kw.pop("image") if "image" in kw else SourceImage(key=kw.pop("key", uid), pixels=pixels, path=path)
    fields: dict[str, Any] = {
        "uid": uid,
        "image": image,
        "modality": "CT",
        "body_part": "chest",
        "task": "comprehension",
        "kind": "vqa_closed",
        "question": "Is there an effusion?",
        "answer": "no",
        "group": f"g-{uid}",
        "license": "CC0-1.0",
    }
    fields.update(kw)
    return SourceSample(**fields)
