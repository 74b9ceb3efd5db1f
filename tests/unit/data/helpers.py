"""Helpers for the data-stage tests: a DICOM writer with known PHI, an in-memory test source kind, a build
with the default policy, and tree snapshots."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pydicom
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


def write_phi_dicom(
    path: Path,
    *,
    base: Path | None = None,
    name: str = "Doe^Jane",
    patient_id: str = "MRN-998877",
    extra: dict[str, str] | None = None,
) -> list[str]:
    """Write a CT slice (``base``, default pydicom's CT_small.dcm) whose header carries PHI in many attributes of
    the PS3.15 E.1-1 table: names, ids, dates, institution, addresses, telecom, ReasonForVisit, free text, a
    ContentSequence text item, private tags (top level and in a sequence) and nested sequences. Returns the PHI
    strings planted (each at least 5 characters; none may survive de-identification). ``extra`` attributes
    (keyword -> value, e.g. BodyPartExamined) are set last as given and are not in the returned list.

    Instance UIDs derive from ``path`` (study: from ``patient_id``), so several files are several instances."""
    import pydicom
    from pydicom.dataset import Dataset
    from pydicom.uid import generate_uid

    ds = pydicom.dcmread(base or Path(pydicom.__file__).parent / "data" / "test_files" / "CT_small.dcm")
    study_uid = generate_uid(entropy_srcs=[patient_id, "phi-study"])
    series_uid = generate_uid(entropy_srcs=[patient_id, "phi-series"])
    instance_uid = generate_uid(entropy_srcs=[str(path), "phi-instance"])
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = instance_uid
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.SpecificCharacterSet = "ISO_IR 100"  # latin-1: the umlaut below is written as one byte
    attrs = {
        "PatientName": name,
        "PatientID": patient_id,
        "PatientBirthDate": "19610723",
        "PatientBirthTime": "031500",
        "OtherPatientNames": "Grünewald^Ottilie",
        "OtherPatientIDs": "MRN-ALT-553311",
        "PatientMotherBirthName": "Quillfeather^Maud",
        "PatientAddress": "42 Ravensworth Lane, Thistlebury",
        "PatientTelephoneNumbers": "+44-5550-199314",
        "PatientTelecomInformation": "ottilie@quillfeather.example",
        "MedicalRecordLocator": "LOCKER-ZELDENRUST-9",
        "Occupation": "Lamplighter",
        "AdditionalPatientHistory": "Fell at Ravensworth quarry in spring",
        "PatientComments": "Prefers Dr Ashgrove",
        "ReasonForVisit": "Abdominal pain after Zeldenrust fair",
        "ReferringPhysicianName": "Ashgrove^Bartholomew",
        "RequestingPhysician": "Fairweather^Constance",
        "PerformingPhysicianName": "Pemberton^Ysolde",
        "OperatorsName": "Tremayne^Wilbur",
        "InstitutionName": "Saint Wendeline Infirmary",
        "InstitutionAddress": "17 Corvid Row, Thistlebury",
        "InstitutionalDepartmentName": "Wendeline Radiology",
        "StationName": "THISTLECT07",
        "AccessionNumber": "ACC-7731904",
        "StudyID": "STU-88213",
        "StudyDescription": "Follow-up Ravensworth abdomen",
        "SeriesDescription": "Ashgrove contrast series",
        "ProtocolName": "Wendeline abdo protocol",
        "RequestedProcedureDescription": "Quillfeather requested CT",
        "PerformedProcedureStepDescription": "Tremayne performed CT",
        "ImageComments": "Patient Grünewald was anxious",
        "StudyDate": "20190412",
        "SeriesDate": "20190412",
        "AcquisitionDate": "20190412",
        "ContentDate": "20190412",
    }
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    text = Dataset()  # an SR-style text item: the table says D for the whole ContentSequence
    text.RelationshipType, text.ValueType, text.TextValue = "CONTAINS", "TEXT", "Mass seen by Dr Fairweather"
    ds.ContentSequence = [text]
    nested = Dataset()  # kept sequences, two levels deep: the table applies inside them
    nested.CodeValue, nested.CodingSchemeDesignator, nested.CodeMeaning = "121311", "DCM", "Localizer"
    nested.InstitutionName = "Corvid Row Annex"
    nested.EvaluatorName = "Nightingale^Perpetua"
    nested.add_new(0x00290010, "LO", "ZELDENRUST PRIVATE")
    nested.add_new(0x00291001, "LO", "Grünewald nested private")
    ref = Dataset()
    ref.ReferencedSOPClassUID = ds.SOPClassUID
    ref.ReferencedSOPInstanceUID = generate_uid(entropy_srcs=[str(path), "phi-reference"])
    ref.PurposeOfReferenceCodeSequence = [nested]
    ds.ReferencedImageSequence = [ref]
    ds.add_new(0x00110010, "LO", "QUILLFEATHER PRIVATE")
    ds.add_new(0x00111001, "LO", f"{name} {patient_id} Ravensworth")
    for keyword, value in (extra or {}).items():
        setattr(ds, keyword, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    planted = [v for k, v in attrs.items() if k != "PatientBirthTime" and len(v) >= 5]  # a time is not distinctive
    planted += [text.TextValue, nested.InstitutionName, nested.EvaluatorName, "ZELDENRUST PRIVATE", "Grünewald"]
    planted += ["QUILLFEATHER PRIVATE", "Ravensworth", study_uid, series_uid, instance_uid]
    planted.append(ref.ReferencedSOPInstanceUID)
    return list(dict.fromkeys(planted))


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


# --- every attribute of the de-identification table, set to PHI (tests of the header and of the intake) ------


def _planted(i: int, vr: str) -> tuple[Any, str | None]:
    """A PHI-looking value for the VR and the string to look for in the output (None: not distinctive)."""
    token = f"QZ{i:03d}PHI"  # unique per attribute; 8 characters fit SH, CS and AE
    day = dt.date(1900, 1, 1) + dt.timedelta(days=40 * i)  # a date per attribute
    values: dict[str, tuple[Any, str | None]] = {
        "PN": (f"{token}^Jane", token),
        "UR": (f"http://{token.lower()}.example.org", token.lower()),
        "UI": (f"1.2.826.0.1.3680043.10.543.{1000 + i}", f"1.2.826.0.1.3680043.10.543.{1000 + i}"),
        "DA": (day.strftime("%Y%m%d"), None),  # dates and times: checked value by value below
        "DT": (day.strftime("%Y%m%d") + "101500", None),
        "TM": ("101500", None),
        "AS": ("042Y", None),
        "DS": (f"{1000 + i}.5", None),
        "IS": (str(1000 + i), None),
        "OB": (token.encode(), token),
        "UN": (token.encode(), token),
    }
    values |= {vr: (token, token) for vr in ("AE", "CS", "SH")}
    values |= {vr: (f"{token} of Ravensworth", token) for vr in ("LO", "LT", "ST", "UT", "UC")}
    values |= {vr: (1000 + i, None) for vr in ("US", "SS", "UL", "SL")}
    values |= {vr: (1000.5 + i, None) for vr in ("FL", "FD")}
    return values.get(vr, (None, None))


def _phi_item(token: str, i: int) -> pydicom.Dataset:
    """A sequence item with a person name (not in the table), a listed LO and a UID carrying PHI."""
    item = pydicom.Dataset()
    item.EvaluatorName = f"{token}^Eval"
    item.InstitutionName = f"{token} Infirmary"
    item.ReferencedSOPInstanceUID = f"1.2.826.0.1.3680043.10.544.{1000 + i}"
    return item


def every_table_attribute_dicom() -> tuple[bytes, dict[int, Any], list[str], list[str]]:
    """CT_small with every attribute of the library's table that pydicom knows set to PHI, plus private tags,
    overlay/curve groups and PHI two sequence levels deep. Returns (file bytes, {tag: value}, PHI, skipped)."""
    import io

    from pydicom.datadict import dictionary_VR, keyword_for_tag
    from pydicom.uid import CTImageStorage

    from components.data.deid import table

    ds = pydicom.dcmread(Path(pydicom.__file__).parent / "data" / "test_files" / "CT_small.dcm")
    planted: dict[int, Any] = {}
    phi = ["Ravensbrück", "QZPRIVTOP", "QZPRIVSEQ", "QZNESTED", "QZCURVE", "1.2.826.0.1.3680043.10.545.7"]
    skipped: list[str] = []
    for i, tag in enumerate(sorted(table())):
        group = tag >> 16
        vr = dictionary_VR(tag) if keyword_for_tag(tag) else ""
        if group == 0x0002 or tag == 0x00100010:  # MediaStorageSOPInstanceUID, PatientName: set below
            continue
        if not vr or group == 0x0000:  # unknown to pydicom 3.0.2 (newer than its dictionary); DIMSE commands
            skipped.append(f"{tag:08X} {keyword_for_tag(tag) or '?'}")
            continue
        if vr == "SQ":
            value, search = [_phi_item(f"QZ{i:03d}PHI", i)], f"QZ{i:03d}PHI"
            phi.append(f"1.2.826.0.1.3680043.10.544.{1000 + i}")
        else:
            value, search = _planted(i, vr)
            if value is None:
                skipped.append(f"{tag:08X} {keyword_for_tag(tag)} ({vr})")
                continue
        ds.add_new(tag, vr, value)
        planted[tag] = value
        phi += [search] if search else []
    ds.PatientName = planted[0x00100010] = "Ravensbrück^Jürgen"  # ISO_IR 100: written as latin-1
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    planted[0x00020003] = ds.SOPInstanceUID
    ds.add_new(0x00090010, "LO", "QZPRIVTOP creator")  # private tags at the top level ...
    ds.add_new(0x00091001, "LO", "QZPRIVTOP Ravensbrück")
    deep = _phi_item("QZNESTED", 7)
    deep.ReferencedSOPClassUID, deep.ReferencedSOPInstanceUID = CTImageStorage, "1.2.826.0.1.3680043.10.545.7"
    deep.add_new(0x00430010, "LO", "QZPRIVSEQ deep")
    deep.add_new(0x00431001, "LO", "QZPRIVSEQ deep value")
    outer = pydicom.Dataset()  # ProcedureCodeSequence and PurposeOfReferenceCodeSequence: not in the table, kept
    outer.CodeValue, outer.CodingSchemeDesignator, outer.CodeMeaning = "CTABD", "99LOCAL", "CT abdomen"
    outer.add_new(0x00290010, "LO", "QZPRIVSEQ creator")  # ... and inside a sequence
    outer.add_new(0x00291001, "LO", "QZPRIVSEQ value")
    outer.PurposeOfReferenceCodeSequence = [deep]
    ds.ProcedureCodeSequence = [outer]
    ds.add_new(0x60000010, "US", 128)  # an overlay group and a curve group
    ds.add_new(0x60003000, "OW", b"\x00\x01" * 8)
    ds.add_new(0x50002500, "LO", "QZCURVE label")
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue(), planted, phi, skipped
