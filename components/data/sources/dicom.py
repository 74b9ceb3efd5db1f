"""The DICOM source: a folder of DICOM files (searched recursively) as modality questions and captions.

Per file the header is read (pixel data left on disk) and de-identified (:mod:`components.data.deid`; the
group is the keyed pseudonym of the PatientID); the records come from non-identifying fields only: a yes/no
and an open question about the modality and a caption (modality, body part). The pixels are decoded later by
the builder's image workers (:func:`components.data.images.dicom_pixels`: pydicom 3 with pylibjpeg, middle
frame, modality rescale, header window or percentile window to 8 bits, MONOCHROME1 inverted, palette and YBR
colour to RGB), and stored as a PNG that carries no header. File names are masked where they contain the
patient's name or id before they appear in any key or message.

A file that is not DICOM, has an unreadable header, no pixel data, or is flagged as carrying burned-in
annotation is quarantined by its path; pixel data that does not decode (truncated, corrupt) quarantines its
records in the build, naming the file; never a traceback. A missing or empty folder is a DataError::

    sources: {hospital_a: {kind: dicom, path: data/raw/dicom, site: hospital-a}}
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from components.data.phi import find_phi
from components.data.sources.base import (
    DataError,
    Quarantined,
    SourceContext,
    SourceImage,
    SourceSample,
    register_source,
    safe_path,
)

# fmt: off
MODALITY_MAP = {"CT": "CT", "MR": "MRI", "CR": "X-ray", "DX": "X-ray", "MG": "X-ray", "RF": "X-ray", "XA": "X-ray",
                "US": "ultrasound", "SM": "pathology"}
#: How the open answer names a modality code that maps to "other".
OTHER_NAMES = {"NM": "nuclear medicine", "PT": "PET", "OT": "other", "XC": "photograph", "ES": "endoscopy"}
ASKABLE = ("CT", "MRI", "X-ray", "ultrasound")
# fmt: on


class DicomSourceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["dicom"] = Field("dicom", description="A folder of DICOM files.")
    path: str = Field(description="Folder, relative to the workspace root; searched recursively.")
    license: str = Field("unknown", description="Licence of the files (SPDX id where one exists).")
    site: str | None = Field(None, description="Site recorded in features.site; null means the source's name.")
    max_date_shift_days: int | None = Field(
        None, ge=1, description="Per-patient date shift bound for de-identification; null means data.deid's."
    )


def _masked(rel: str, ds: Any | None) -> str:
    """The file's relative path for messages, with the patient's name parts and id masked out of it."""
    if ds is None:
        return rel
    parts = str(ds.get("PatientName", "") or "").replace("^", " ").split() + [str(ds.get("PatientID", "") or "")]
    for part in sorted({p for p in parts if len(p) >= 3}, key=len, reverse=True):
        rel = rel.replace(part, "[phi]")
    return rel


def _files(folder: Path) -> list[Path]:
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        found.extend(Path(dirpath) / f for f in sorted(filenames))
    return found


def _coin(key: bytes, text: str) -> int:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()[0]


@register_source("dicom", DicomSourceConfig)
def read_dicom(cfg: DicomSourceConfig, ctx: SourceContext) -> Iterator[SourceSample | Quarantined]:
    import pydicom
    from pydicom.errors import InvalidDicomError

    from components.data.deid import deidentify_dataset, pseudonym
    from components.data.images import error_detail

    folder = safe_path(ctx.root, cfg.path, what=f"source {ctx.name!r} (dicom)")
    if not folder.is_dir():
        raise DataError(f"source {ctx.name!r}: DICOM folder {cfg.path} does not exist (looked in {folder})")
    files = _files(folder)
    if not files:
        raise DataError(f"source {ctx.name!r}: DICOM folder {cfg.path} holds no files")
    site = cfg.site or ctx.name
    parity = _coin(ctx.deid_key, ctx.name) % 2
    for index, path in enumerate(files):
        rel = path.relative_to(folder).as_posix()
        try:
            safe_path(folder, rel, what=f"source {ctx.name!r}")
        except DataError as e:
            yield Quarantined(rel, f"{e} (a symlink out of the folder is refused)")
            continue
        try:  # large elements (the pixel data) stay on disk: the image workers decode them
            ds = pydicom.dcmread(path, defer_size="64 KB")
        except InvalidDicomError:
            yield Quarantined(rel, f"{cfg.path}/{rel}: not a DICOM file (no DICM preamble)")
            continue
        except Exception as e:  # a truncated or corrupt header: quarantine, never a traceback
            yield Quarantined(rel, f"{cfg.path}/{rel}: unreadable DICOM header ({error_detail(e)})")
            continue
        key = f"{cfg.path}/{rel}"
        try:  # a malformed element (a date, a count, a name) quarantines the file, never a traceback
            key = f"{cfg.path}/{_masked(rel, ds)}"
            problem = _refusal(ds)
            if problem is None:
                pid = str(ds.get("PatientID", "") or "").strip()
                fallback = str(ds.get("StudyInstanceUID", "") or "") or f"file:{ctx.name}/{rel}"
                patient = pid or f"study:{fallback}"
                shift = cfg.max_date_shift_days or 365
                deidentify_dataset(ds, ctx.deid_key, max_date_shift_days=shift, patient_id=patient)
                ask_true = (index + parity) % 2 == 0  # alternate files ask a true / a wrong modality: balanced
                image = SourceImage(key=key, path=path)  # decoded by the image workers (components.data.images)
                samples = list(_samples(cfg, ctx, ds, image, pseudonym(ctx.deid_key, patient), site, ask_true))
        except Exception as e:
            problem = f"malformed header ({error_detail(e)})"
        if problem is not None:
            yield Quarantined(key, f"{key}: {problem}")
        else:
            yield from samples


def _refusal(ds: Any) -> str | None:
    """Why a readable DICOM file cannot become records, or None."""
    if not any(t in ds for t in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        return f"no pixel data (SOP class {ds.get('SOPClassUID', 'unknown')})"
    if str(ds.get("BurnedInAnnotation", "")).upper() == "YES":
        return "BurnedInAnnotation is YES (pixels may show patient data)"
    return None


def _samples(
    cfg: DicomSourceConfig,
    ctx: SourceContext,
    ds: Any,
    image: SourceImage,
    group: str,
    site: str,
    ask_true: bool,
) -> Iterator[SourceSample]:
    code = str(ds.get("Modality", "") or "").strip().upper()
    modality = MODALITY_MAP.get(code, "other")
    name = OTHER_NAMES.get(code, "other") if modality == "other" else modality
    body = " ".join(str(ds.get("BodyPartExamined", "") or "").lower().replace("_", " ").split()) or "unknown"
    if find_phi(body) or len(body) > 40:
        body = "unknown"
    file_id = "f-" + hmac.new(ctx.deid_key, f"uid:{ctx.name}/{image.key}".encode(), hashlib.sha256).hexdigest()[:12]
    features = {"task": "comprehension", "modality": modality, "body_part": body, "site": site}
    asked = name
    if not ask_true or name == "other":  # "Is this an other image?" is no question: ask a wrong modality
        others = [m for m in ASKABLE if m != name]
        asked = others[_coin(ctx.deid_key, file_id + "/m") % len(others)]
    art = "an" if asked[0] in "AEFHILMNORSXaeiou" else "a"
    region = f" of the {body}" if body != "unknown" else ""
    noun = "medical" if name == "other" else name
    caption = f"{'An' if noun[0] in 'AEFHILMNORSXaeiou' else 'A'} {noun} image{region}."
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        caption += f" Middle frame of a {frames}-frame series."
    items = [
        ("modality_yn", "vqa_closed", f"Is this {art} {asked} image?", "yes" if asked == name else "no"),
        ("modality_open", "vqa_open", "What imaging modality is this?", name),
        ("caption", "caption", "Describe this image.", caption),
    ]
    for qtype, kind, question, answer in items:
        yield SourceSample(
            uid=f"{file_id}/{qtype}",
            image=image,
            modality=modality,
            body_part=body,
            task="comprehension",
            kind=kind,
            question=question,
            answer=answer,
            group=group,
            license=cfg.license,
            features=dict(features),
            meta={"question_type": qtype, "dicom_modality": code or "unknown", "frames": frames},
        )
