"""The DICOM source: a folder of DICOM files (searched recursively) as modality questions and captions.

The folder is normally a source's de-identified raw folder, filled from the intake area by ``medtune data
ingest`` (:mod:`components.data.intake`); a folder read directly is de-identified here as well. Per file the
header is read (pixel data left on disk) and, unless medtune already de-identified it, de-identified
(:mod:`components.data.deid`); the group is the keyed pseudonym of the PatientID. Records come from
non-identifying fields only, each looked up in the standard's defined terms (:mod:`components.data.defined_terms`:
free text never becomes record text): a yes/no and an open question about the modality and a caption (modality,
body part). The pixels are decoded later by the builder's image workers
(:func:`components.data.images.dicom_pixels`: pydicom 3 with pylibjpeg, middle frame, modality rescale, header
window or percentile window to 8 bits, MONOCHROME1 inverted, palette and YBR colour to RGB), and stored as a PNG
that carries no header. Every path a message shows is a keyed path pseudonym (:mod:`components.data.pseudonyms`).

A file that is not DICOM, has an unreadable header or no pixel data is quarantined by its pseudonymised path, and
so is one whose pixels may carry burned-in text and were not checked at intake (BurnedInAnnotation YES, or absent
for ultrasound, secondary capture ...: :func:`components.data.burned_in.needs_check`); pixel data that does not
decode (truncated, corrupt) quarantines its records in the build; never a traceback. A missing or empty folder
is a DataError::

    sources: {hospital_a: {kind: dicom, path: data/raw/hospital_a, site: hospital-a}}
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from components.data.defined_terms import body_part_term, modality_term
from components.data.pseudonyms import PathPseudonyms
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
    from components.data.deid import quiet_pydicom

    folder = safe_path(ctx.root, cfg.path, what=f"source {ctx.name!r} (dicom)")
    if not folder.is_dir():
        raise DataError(f"source {ctx.name!r}: DICOM folder {cfg.path} does not exist (looked in {folder})")
    files = _files(folder)
    if not files:
        raise DataError(f"source {ctx.name!r}: DICOM folder {cfg.path} holds no files")
    site = cfg.site or ctx.name
    parity = _coin(ctx.deid_key, ctx.name) % 2
    names = PathPseudonyms(ctx.deid_key, ctx.pseudonym_map)
    try:
        for index, path in enumerate(files):
            with quiet_pydicom():  # pydicom's warnings about a bad value quote the value: PHI
                result = list(_read_one(cfg, ctx, folder, path, index, parity, names, site))
            yield from result
    finally:
        names.save()


def _read_one(
    cfg: DicomSourceConfig,
    ctx: SourceContext,
    folder: Path,
    path: Path,
    index: int,
    parity: int,
    names: PathPseudonyms,
    site: str,
) -> Iterator[SourceSample | Quarantined]:
    import pydicom
    from pydicom.errors import InvalidDicomError

    from components.data.deid import deidentify_dataset, pseudonym
    from components.data.images import error_detail

    rel = path.relative_to(folder).as_posix()
    key = f"{cfg.path}/{names.path(rel)}"  # no file or folder name is ever shown: they may name patients
    try:
        safe_path(folder, rel, what=f"source {ctx.name!r} file {key}")
    except DataError:
        yield Quarantined(key, f"{key}: a symbolic link out of the folder is refused")
        return
    try:  # large elements (the pixel data) stay on disk: the image workers decode them
        ds = pydicom.dcmread(path, defer_size="64 KB")
    except InvalidDicomError:
        yield Quarantined(key, f"{key}: not a DICOM file (no DICM preamble)")
        return
    except Exception as e:  # a truncated or corrupt header: quarantine, never a traceback
        yield Quarantined(key, f"{key}: unreadable DICOM header ({error_detail(e)})")
        return
    try:  # a malformed element (a date, a count, a name) quarantines the file, never a traceback
        problem = _refusal(ds, ctx.name)
        if problem is None:
            if _deidentified_by_medtune(ds):
                group = str(ds.get("PatientID", "") or "")  # the pseudonym the intake wrote
            else:
                pid = str(ds.get("PatientID", "") or "").strip()
                fallback = str(ds.get("StudyInstanceUID", "") or "") or f"file:{ctx.name}/{rel.casefold()}"
                patient = pid or f"study:{fallback}"
                shift = cfg.max_date_shift_days or 365
                deidentify_dataset(ds, ctx.deid_key, max_date_shift_days=shift, patient_id=patient)
                group = pseudonym(ctx.deid_key, patient)
            ask_true = (index + parity) % 2 == 0  # alternate files ask a true / a wrong modality: balanced
            image = SourceImage(key=key, path=path)  # decoded by the image workers (components.data.images)
            samples = list(_samples(cfg, ctx, ds, image, group, site, ask_true))
    except Exception as e:
        problem = f"malformed header ({error_detail(e)})"
    if problem is not None:
        yield Quarantined(key, f"{key}: {problem}")
    else:
        yield from samples


def _deidentified_by_medtune(ds: Any) -> bool:
    from components.data.deid import METHOD

    return (
        str(ds.get("PatientIdentityRemoved", "")).upper() == "YES"
        and str(ds.get("DeidentificationMethod", "")) == METHOD
        and str(ds.get("PatientID", "")).startswith("pt-")
    )


def _refusal(ds: Any, source: str) -> str | None:
    """Why a readable DICOM file cannot become records, or None."""
    from components.data.burned_in import needs_check

    if not any(t in ds for t in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        return f"no pixel data (SOP class {ds.get('SOPClassUID', 'unknown')})"
    why = needs_check(ds)
    if why is not None:
        return (
            f"pixels may show burned-in patient data ({why}) and were not checked: put the file in the source's "
            "intake folder (data.intake) so that `medtune data ingest` checks and masks it"
        )
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
    code = modality_term(ds.get("Modality", ""))  # a defined term, "other" or "unknown": never free text
    modality = MODALITY_MAP.get(code, "other")
    name = OTHER_NAMES.get(code, "other") if modality == "other" else modality
    body = body_part_term(ds.get("BodyPartExamined", ""))  # PS3.16 Annex L defined terms; else "other"
    file_id = "f-" + hmac.new(ctx.deid_key, f"uid:{ctx.name}/{image.key}".encode(), hashlib.sha256).hexdigest()[:12]
    features = {"task": "comprehension", "modality": modality, "body_part": body, "site": site}
    asked = name
    if not ask_true or name == "other":  # "Is this an other image?" is no question: ask a wrong modality
        others = [m for m in ASKABLE if m != name]
        asked = others[_coin(ctx.deid_key, file_id + "/m") % len(others)]
    art = "an" if asked[0] in "AEFHILMNORSXaeiou" else "a"
    region = f" of the {body}" if body not in ("unknown", "other") else ""
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
            meta={"question_type": qtype, "dicom_modality": code, "frames": frames},
        )
