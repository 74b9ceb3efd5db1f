"""The DICOM source and de-identification: embedded samples decode, windowing and colour, bad files are
quarantined by name, and no PHI value reaches any output file.

    .venv/bin/pytest tests/unit/data/test_dicom_deid.py -q
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import re
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest

from components.data.deid import (
    DATABASE,
    METHOD,
    date_shift_days,
    deidentify_dataset,
    load_deid_key,
    mark_clean_pixels,
    pseudonym,
    remap_uid,
    table,
)
from components.data.images import decode_file, dicom_pixels
from components.data.pseudonyms import component_pseudonym
from components.data.samples import EMBEDDED_DICOM, embedded_sources, materialize_embedded
from components.data.sources import SOURCES, DataError, Quarantined, SourceContext, SourceSample
from components.data.sources.dicom import DicomSourceConfig
from tests.unit.data.helpers import (
    KEY,
    PHI,
    PHI_STRINGS,
    build,
    every_table_attribute_dicom,
    phi_ct,
    tree_bytes,
    write_dicom,
    write_phi_dicom,
)

PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"


def read(ws: Path, path: str = "dicom") -> list[SourceSample | Quarantined]:
    ctx = SourceContext(name="dcm", root=ws, deid_key=KEY, seed=0)
    return list(SOURCES["dicom"].reader(DicomSourceConfig(path=path), ctx))


def test_embedded_samples_copy_byte_identical_and_idempotent(tmp_path: Path) -> None:
    files = materialize_embedded(tmp_path)
    assert [p.name for p in files] == sorted(name for _, _, name, _ in EMBEDDED_DICOM)
    assert {p.name: p.read_bytes() for p in files} == {p.name: p.read_bytes() for p in embedded_sources()}
    assert sum(p.stat().st_size for p in files) < 2_000_000
    before = {p: p.stat().st_mtime_ns for p in files}
    materialize_embedded(tmp_path)
    assert {p: p.stat().st_mtime_ns for p in files} == before


def test_embedded_samples_all_decode(embedded_ws: Path) -> None:
    items = read(embedded_ws, "data/raw/dicom")
    assert not [i for i in items if isinstance(i, Quarantined)]
    samples = [i for i in items if isinstance(i, SourceSample)]
    assert len(samples) == 3 * len(EMBEDDED_DICOM)
    assert {s.modality for s in samples} == {"CT", "MRI", "X-ray", "ultrasound", "other"}
    assert {"abdomen", "extremity", "head", "pancreas"} <= {s.body_part for s in samples}
    for path in {s.image.path for s in samples}:
        assert path is not None
        px = decode_file(path, key=path.name)  # what the builder's image workers do
        assert px.dtype == np.uint8 and px.ndim in (2, 3) and px.std() > 5, path.name
    for s in samples:
        assert s.group.startswith("pt-") and re.fullmatch(r"f-[0-9a-f]{12}/\w+", s.uid)
    answers = {s.image.key: s.answer for s in samples if s.meta["question_type"] == "modality_open"}
    assert {"CT", "MRI", "nuclear medicine"} <= set(answers.values())  # CT_small, MR_small, JPEG2000
    assert all(re.fullmatch(r"data/raw/dicom/pt-[0-9a-f]{16}/f-[0-9a-f]{16}\.dcm", k) for k in answers)  # ingested


@pytest.mark.parametrize(
    ("code", "modality"),
    [("CT", "CT"), ("MR", "MRI"), ("CR", "X-ray"), ("DX", "X-ray"), ("MG", "X-ray"), ("XA", "X-ray"),
     ("US", "ultrasound"), ("SM", "pathology"), ("NM", "other"), ("", "other")],
)  # fmt: skip
def test_modality_from_header(tmp_path: Path, code: str, modality: str) -> None:
    pixels = np.arange(64, dtype=np.uint16).reshape(8, 8)  # BurnedInAnnotation NO: no burned-in check (US)
    write_dicom(tmp_path / "dicom" / "a.dcm", pixels, modality=code, BurnedInAnnotation="NO")
    samples = read(tmp_path)
    assert {s.modality for s in samples} == {modality}  # type: ignore[union-attr]
    qa = {s.meta["question_type"]: s for s in samples}  # type: ignore[union-attr]
    named = qa["modality_open"].answer
    assert named == {"NM": "nuclear medicine", "": "other"}.get(code, modality)
    assert (qa["modality_yn"].answer == "yes") == (f" {named} image" in qa["modality_yn"].question)


def test_window_rescale_monochrome1_and_middle_frame(tmp_path: Path) -> None:
    raw = np.array([[0, 1004, 1064, 1124, 4000]], dtype=np.uint16)  # HU -1024, -20, 40, 100, 2976
    ds = pydicom.dcmread(
        write_dicom(tmp_path / "w.dcm", raw, RescaleSlope=1, RescaleIntercept=-1024, WindowCenter=40, WindowWidth=120)
    )
    out = dicom_pixels(ds)[0]
    assert out[0] == 0 and out[4] == 255 and abs(int(out[2]) - 128) <= 2 and out[1] < out[2] < out[3]
    ds.PhotometricInterpretation = "MONOCHROME1"
    assert np.array_equal(dicom_pixels(ds)[0], 255 - out)
    frames = np.stack([np.full((4, 4), v, np.uint16) for v in (10, 500, 900)])
    frames[:, 0, 0] = 0  # a little contrast per frame for the percentile window
    ds = pydicom.dcmread(write_dicom(tmp_path / "m.dcm", frames, WindowCenter=500, WindowWidth=200))
    assert dicom_pixels(ds).shape == (4, 4) and dicom_pixels(ds)[1, 1] == 128  # frame 1 of 3 at the centre
    ds = pydicom.dcmread(write_dicom(tmp_path / "p.dcm", np.arange(100, dtype=np.uint16).reshape(10, 10) * 40))
    assert dicom_pixels(ds).min() == 0 and dicom_pixels(ds).max() == 255  # no window in the header: percentiles


def test_colour_palette_and_ybr() -> None:
    palette = dicom_pixels(pydicom.dcmread(PYDICOM_FILES / "examples_palette.dcm"))
    ybr = dicom_pixels(pydicom.dcmread(PYDICOM_FILES / "examples_ybr_color.dcm"))
    for arr in (palette, ybr):
        assert arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[2] == 3
    assert (ybr[..., 0].astype(int) - ybr[..., 2]).std() > 1  # real colour, not grey in three channels


def test_bad_files_are_quarantined_by_name(tmp_path: Path) -> None:
    folder = tmp_path / "dicom"
    write_dicom(folder / "ok.dcm", np.arange(64, dtype=np.uint16).reshape(8, 8))
    (folder / "notes.txt").write_text("not a DICOM file")
    whole = (PYDICOM_FILES / "CT_small.dcm").read_bytes()
    (folder / "cut.dcm").write_bytes(whole[: len(whole) // 2])  # header intact, pixel data cut short
    (folder / "stub.dcm").write_bytes(whole[:300])  # cut inside the header
    (folder / "badvr.dcm").write_bytes((PYDICOM_FILES / "badVR.dcm").read_bytes())  # NumberOfFrames '1A'
    write_dicom(folder / "nopixels.dcm", None)
    write_dicom(folder / "burned.dcm", np.ones((4, 4), np.uint16), BurnedInAnnotation="YES")
    (tmp_path / "outside.dcm").write_bytes(whole)
    os.symlink(tmp_path / "outside.dcm", folder / "link.dcm")
    report = build({"d": DicomSourceConfig(path="dicom")}, tmp_path / "out", tmp_path)
    names = ("notes.txt", "cut.dcm", "stub.dcm", "badvr.dcm", "nopixels.dcm", "burned.dcm", "link.dcm")
    shown = {n: component_pseudonym(KEY, n) for n in names}  # messages name files by keyed path pseudonyms
    reasons = {
        n: " | ".join(q["reason"] for q in report.quarantined if shown[n] in q["key"] + q["reason"]) for n in names
    }
    assert all(reasons.values()), reasons
    assert len(report.quarantined) == 6 + 3  # cut.dcm's three records each name the undecodable file
    assert "not a DICOM file" in reasons["notes.txt"] and f"dicom/{shown['notes.txt']}" in reasons["notes.txt"]
    assert f"dicom/{shown['cut.dcm']}" in reasons["cut.dcm"] and "cannot decode DICOM pixel data" in reasons["cut.dcm"]
    assert f"dicom/{shown['stub.dcm']}" in reasons["stub.dcm"] and "malformed header" in reasons["badvr.dcm"]
    assert "no pixel data" in reasons["nopixels.dcm"] and "BurnedInAnnotation" in reasons["burned.dcm"]
    assert "symbolic link" in reasons["link.dcm"]
    assert "Traceback" not in json.dumps(report.quarantined)
    assert report.records == 3  # only ok.dcm: a yes/no question, an open question, a caption


def test_missing_empty_and_escaping_folders_raise(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    for path, words in (("nope", "does not exist"), ("empty", "holds no files"), ("../x", "escapes")):
        with pytest.raises(DataError, match=words) as e:
            read(tmp_path, path)
        assert path.lstrip("./") in str(e.value)


def test_deidentify_dataset_profile(tmp_path: Path) -> None:
    ds = pydicom.dcmread(phi_ct(tmp_path / "a.dcm"))
    original_uid, study_date = str(ds.SOPInstanceUID), ds.StudyDate
    deidentify_dataset(ds, KEY, max_date_shift_days=30)
    assert ds.PatientName == ds.PatientID == pseudonym(KEY, PHI["PatientID"])
    assert ds.PatientBirthDate == "" and ds.AccessionNumber == "" and ds.ReferringPhysicianName == ""
    assert "InstitutionName" not in ds and "OperatorsName" not in ds
    assert not any(e.tag.is_private for e in ds)
    item = ds.ProcedureCodeSequence[0]  # inside a sequence: listed attributes removed, other names emptied
    assert "PerformingPhysicianName" not in item and item.PersonName == ""
    shift = (dt.date.fromisoformat(study_date[:4] + "-" + study_date[4:6] + "-" + study_date[6:])
             - dt.date.fromisoformat(f"{ds.StudyDate[:4]}-{ds.StudyDate[4:6]}-{ds.StudyDate[6:]}")).days  # fmt: skip
    assert shift == date_shift_days(KEY, PHI["PatientID"], 30) and 1 <= shift <= 30
    assert ds.SOPInstanceUID != original_uid and str(ds.SOPInstanceUID).startswith("2.25.")
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID  # references stay consistent
    assert ds.SOPClassUID == pydicom.uid.CTImageStorage  # well-known UIDs are kept
    assert ds.PatientIdentityRemoved == "YES" and ds.DeidentificationMethod == METHOD
    assert ds.LongitudinalTemporalInformationModified == "MODIFIED"
    assert [c.CodeValue for c in ds.DeidentificationMethodCodeSequence] == ["113100", "113107"]


def test_same_patient_same_pseudonym_and_shift(tmp_path: Path) -> None:
    a = deidentify_dataset(pydicom.dcmread(phi_ct(tmp_path / "a.dcm")), KEY)
    b = deidentify_dataset(pydicom.dcmread(phi_ct(tmp_path / "b.dcm", SeriesDate="20240320")), KEY)
    c = deidentify_dataset(pydicom.dcmread(phi_ct(tmp_path / "c.dcm", PatientID="OTHER-1")), KEY)
    assert a.PatientID == b.PatientID != c.PatientID
    assert a.StudyDate == b.StudyDate and b.SeriesDate > b.StudyDate  # same shift: the 5-day interval survives
    assert re.fullmatch(r"pt-[0-9a-f]{16}", a.PatientID)
    assert pseudonym(b"another-key-0123456789", PHI["PatientID"]) != a.PatientID


def test_no_phi_in_any_output_file(tmp_path: Path) -> None:
    folder = tmp_path / "raw" / "dicom"
    phi_ct(folder / "MRN-998877_ct.dcm")  # the patient id in the file name, too
    phi_ct(folder / "followup.dcm", StudyDate="20240401", WindowCenter=60)  # same patient, other image
    write_dicom(folder / "Doe_Jane_nopixels.dcm", None, **PHI)
    whole = phi_ct(tmp_path / "whole.dcm").read_bytes()
    (folder / "Doe_Jane_cut.dcm").write_bytes(whole[: len(whole) - 2000])  # pixels fail in the image worker
    for name in ("CT_small.dcm", "MR_small.dcm"):
        (folder / name).write_bytes((PYDICOM_FILES / name).read_bytes())
    report = build({"hospital": DicomSourceConfig(path="raw/dicom")}, tmp_path / "out", tmp_path)
    files = tree_bytes(tmp_path / "out")
    assert report.records == 12 and len(report.quarantined) == 1 + 3
    nopixels, cut = (f"raw/dicom/{component_pseudonym(KEY, n)}" for n in ("Doe_Jane_nopixels.dcm", "Doe_Jane_cut.dcm"))
    assert {q["key"] for q in report.quarantined if "raw/" in q["key"]} == {nopixels}  # keyed path pseudonyms
    assert sum(cut in q["reason"] for q in report.quarantined) == 3  # the cut file's records name it
    leaks = ("CompressedSamples", "1CT1", "4MR1", "JFK IMAGING", *PHI_STRINGS)
    for name, data in files.items():
        for value in leaks:
            assert value.encode() not in data, f"{value!r} found in {name}"
    groups = {line.split(b'"group":"')[1].split(b'"')[0] for line in files["records.jsonl"].splitlines()}
    assert pseudonym(KEY, PHI["PatientID"]).encode() in groups and len(groups) == 3  # two files of one patient
    for name, data in files.items():
        if name.endswith(".png"):
            assert b"tEXt" not in data and b"iTXt" not in data and b"zTXt" not in data and b"eXIf" not in data


# --- the whole E.1-1 table (issue 18): every attribute the library lists, set with PHI -----------------------------


def _deid_bytes(raw: bytes, key: bytes) -> tuple[bytes, pydicom.Dataset]:
    ds = deidentify_dataset(pydicom.dcmread(io.BytesIO(raw)), key, max_date_shift_days=30)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue(), ds


def test_every_attribute_of_the_table_is_deidentified(capsys: pytest.CaptureFixture[str]) -> None:
    raw, planted, phi, skipped = every_table_attribute_dicom()
    assert len(planted) >= 600 and len(planted) + len(skipped) == len(table()), skipped
    assert all(len(s) >= 5 and (s.encode("utf-8") in raw or s.encode("latin-1") in raw) for s in phi)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out, ds = _deid_bytes(raw, KEY)
    assert capsys.readouterr().out == "" and not caught  # the library's prints and pydicom's warnings stay in
    leaks = [s for s in phi if s.encode("utf-8") in out or s.encode("latin-1") in out]
    assert not leaks
    shift = date_shift_days(KEY, str(planted[0x00100020]).strip(), 30)
    assert ds.PatientID == ds.PatientName == pseudonym(KEY, str(planted[0x00100020]).strip())
    for tag, value in planted.items():
        elem = (ds.file_meta if tag >> 16 == 2 else ds).get(tag)
        if tag in (0x00100010, 0x00100020):
            continue
        vr = pydicom.datadict.dictionary_VR(tag)
        if tag == 0x00100030:
            assert elem.value == "", "PatientBirthDate is emptied"
        elif tag == 0x00100032:
            assert elem is None, "PatientBirthTime is removed"
        elif vr in ("DA", "DT"):  # the modified-dates option: every date moved back, D and X included
            day = dt.date(int(value[:4]), int(value[4:6]), int(value[6:8])) - dt.timedelta(days=shift)
            assert elem.value == day.strftime("%Y%m%d") + value[8:], elem
        elif vr == "TM":
            assert elem.value == value, elem  # times of day stay with the shifted dates
        else:
            assert elem is None or elem.value != value, elem  # removed, emptied, dummy or re-mapped
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID == remap_uid(KEY, planted[0x00020003])
    assert ds.ContentDate != "00010101" and ds.ClinicalTrialSponsorName == "ANONYMIZED"  # D: shifted; dummy
    item = ds.ReferencedImageSequence[0]  # X/Z/U*: kept, and the table applies inside
    assert "InstitutionName" not in item and item.EvaluatorName == ""
    assert item.ReferencedSOPInstanceUID == remap_uid(KEY, planted[0x00081140][0].ReferencedSOPInstanceUID)
    deep = ds.ProcedureCodeSequence[0].PurposeOfReferenceCodeSequence[0]
    assert deep.ReferencedSOPClassUID == pydicom.uid.CTImageStorage and "InstitutionName" not in deep
    assert deep.ReferencedSOPInstanceUID == remap_uid(KEY, "1.2.826.0.1.3680043.10.545.7")
    assert "OperatorsName" not in ds and "InstitutionName" not in ds and "StationName" not in ds  # X/Z/D: X
    assert not [e for e in ds.iterall() if e.tag.is_private or e.tag.group in (0x5000, 0x6000)]
    content = ds.ContentSequence[0]  # D: the sequence stays, its items cleaned (dummies: the text item test)
    assert "InstitutionName" not in content and content.EvaluatorName == "" and len(ds.SpecimenPreparationSequence) == 0
    again, _ = _deid_bytes(raw, KEY)
    other, other_ds = _deid_bytes(raw, b"another-key-0123456789abcdef")
    assert again == out  # deterministic: no random UIDs, no time stamps
    assert other_ds.SOPInstanceUID != ds.SOPInstanceUID and other_ds.PatientID != ds.PatientID
    assert other_ds.ReferencedImageSequence[0].ReferencedSOPInstanceUID != item.ReferencedSOPInstanceUID


def test_table_is_the_newest_the_library_ships() -> None:
    import pkgutil

    from dicomanonymizer import dicom_anonymization_databases as databases
    from dicomanonymizer.simpledicomanonymizer import initialize_actions

    assert max(m.name for m in pkgutil.iter_modules(databases.__path__)) == DATABASE
    rules = initialize_actions(DATABASE)
    assert set(table()) == {(t[0] << 16) | t[1] for t in rules if len(t) == 2} and len(table()) > 600
    assert len(METHOD) <= 64 and DATABASE.rsplit("_", 1)[1] in METHOD


def test_pixel_data_is_never_read(tmp_path: Path) -> None:
    path = tmp_path / "a.dcm"
    write_phi_dicom(path)
    ds = pydicom.dcmread(path, defer_size=1024)  # the 32 KB of pixel data stay on disk
    path.unlink()  # a deferred read now fails
    deidentify_dataset(ds, KEY)
    assert ds.get_item(0x7FE00010, keep_deferred=True).value is None


def test_unparseable_values_are_dropped_quietly(
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    ds = pydicom.dcmread(PYDICOM_FILES / "CT_small.dcm")
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the bad values set here
        ds.StudyDate, ds.SeriesDate, ds.StudyTime = "2019-04-12", "20190230", "Doe^Jane"
        ds.AcquisitionDateTime, ds.ContentDate = "2019", ["20190412", "20190413"]
        ds.FrameOfReferenceUID = "1.2.Doe^Jane"
        ds.save_as(buffer)
    raw = buffer.getvalue()
    with caplog.at_level("WARNING"), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert pydicom.dcmread(io.BytesIO(raw)).FrameOfReferenceUID and caplog.records and caught  # quotes the value
        caplog.clear(), caught.clear()
        ds = deidentify_dataset(pydicom.dcmread(io.BytesIO(raw)), KEY, max_date_shift_days=1)
    assert not caplog.records and not caught and capsys.readouterr() == ("", "")
    assert ds.StudyDate == ds.SeriesDate == ds.StudyTime == ds.AcquisitionDateTime == ""
    assert list(ds.ContentDate) == ["20190411", "20190412"]
    assert ds.FrameOfReferenceUID == remap_uid(KEY, "1.2.Doe^Jane")


def test_mark_clean_pixels() -> None:
    ds = deidentify_dataset(pydicom.dcmread(PYDICOM_FILES / "CT_small.dcm"), KEY)
    ds.BurnedInAnnotation = "YES"
    mark_clean_pixels(mark_clean_pixels(ds))
    assert [c.CodeValue for c in ds.DeidentificationMethodCodeSequence] == ["113100", "113107", "113101"]
    assert ds.DeidentificationMethodCodeSequence[2].CodeMeaning == "Clean Pixel Data Option"
    assert ds.BurnedInAnnotation == "NO" and ds.DeidentificationMethod == METHOD
    first = mark_clean_pixels(pydicom.dcmread(PYDICOM_FILES / "CT_small.dcm"))  # the intake masks, then de-identifies
    first.DeidentificationMethodCodeSequence.append(pydicom.Dataset())  # someone else's claim: not kept
    first.DeidentificationMethodCodeSequence[-1].CodeValue = "113108"
    deidentify_dataset(first, KEY)
    assert [c.CodeValue for c in first.DeidentificationMethodCodeSequence] == ["113100", "113107", "113101"]


def test_write_phi_dicom_plants_what_deid_removes(tmp_path: Path) -> None:
    path = tmp_path / "phi.dcm"
    phi = write_phi_dicom(path, extra={"BodyPartExamined": "ABDOMEN"})
    raw = path.read_bytes()
    assert len(phi) >= 40 and all(len(s) >= 5 for s in phi) and {"Doe^Jane", "MRN-998877"} <= set(phi)
    assert all(s.encode("utf-8") in raw or s.encode("latin-1") in raw for s in phi)
    out, ds = _deid_bytes(raw, KEY)
    assert not [s for s in phi if s.encode("utf-8") in out or s.encode("latin-1") in out]
    assert ds.BodyPartExamined == "ABDOMEN" and ds.PatientID == pseudonym(KEY, "MRN-998877")
    assert ds.ContentSequence[0].TextValue == "ANONYMIZED"  # D on the ContentSequence: the library's dummy
    other = write_phi_dicom(tmp_path / "b.dcm", name="Roe^Richard", patient_id="MRN-123450")
    assert "Roe^Richard" in other and other[-3] != phi[-3]  # another file: another instance UID


def test_load_deid_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key_file = tmp_path / "secrets" / "deid.key"
    monkeypatch.delenv("MT_TEST_KEY", raising=False)
    key = load_deid_key("MT_TEST_KEY", key_file)
    assert len(key) == 32 and key_file.stat().st_mode & 0o777 == 0o600
    assert load_deid_key("MT_TEST_KEY", key_file) == key  # created once
    monkeypatch.setenv("MT_TEST_KEY", "an-env-key-that-wins-0001")
    assert load_deid_key("MT_TEST_KEY", key_file) == b"an-env-key-that-wins-0001"
    monkeypatch.setenv("MT_TEST_KEY", "short-secret")
    with pytest.raises(ValueError, match="MT_TEST_KEY") as e:
        load_deid_key("MT_TEST_KEY", key_file)
    assert "short-secret" not in str(e.value)
