"""The intake boundary: identified DICOM files in, de-identified files into the versioned raw tree (issue 18).

Identified files arrive in a local intake area (``data.intake``, default ``data/intake``) that neither git nor
DVC tracks. Every DICOM source whose ``path`` lies in the raw tree (``data.raw``) has its intake folder at the
same place under the intake area::

    data/intake/hospital_a/**/*.dcm   (identified; never versioned, pushed or logged)
        --- medtune data ingest --->
    data/raw/hospital_a/pt-<patient pseudonym>/f-<file pseudonym>.dcm   (de-identified; tracked by data.dvc)

Per file: the header is read; a file that is not DICOM or has no pixel data is quarantined (never copied); the
pixels are checked for burned-in text where PS3.15's Clean Pixel Data option calls for it
(:mod:`components.data.burned_in`: masked or quarantined, ``data.deid.burned_in``); then the header is
de-identified (:mod:`components.data.deid`: the whole PS3.15 basic profile, keyed pseudonyms, per-patient date
shift) and written under pseudonymised names. Names in messages and reports are path pseudonyms
(:mod:`components.data.pseudonyms`); the map back lives beside the key in the state folder.

The output folder of a source is replaced atomically (a temporary sibling renamed into place), so a killed
ingest leaves the previous raw tree. Same intake, key and code give byte-identical output; when nothing changed
(intake files' sizes and times, key, settings, code, and the output tree itself) the work is skipped.

    report = ingest(sources, workspace=Path("."), raw="data/raw", intake="data/intake", key=key,
                    secrets=state.secrets, stamps=state.root / "intake", burned_in="mask")
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import os
import secrets as _secrets
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from components.data.build import swap_folder
from components.data.deid import quiet_pydicom
from components.data.pseudonyms import PathPseudonyms
from components.data.sources.base import DataError

Progress = Callable[[str, int, int | None], None]
BurnedInPolicy = Literal["mask", "quarantine"]
MAP_FILE = "path_pseudonyms.json"


@dataclass
class IngestReport:
    """What an ingest did, per source and in all. Keys in ``quarantined`` are path pseudonyms."""

    sources: dict[str, dict[str, int]] = field(default_factory=dict)
    quarantined: list[dict[str, str]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def files(self) -> int:
        return sum(s.get("written", 0) for s in self.sources.values())

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def intake_folders(
    sources: Mapping[str, BaseModel], workspace: Path, raw: str, intake: str
) -> dict[str, tuple[Path, Path]]:
    """``source -> (intake folder, raw folder)`` for every DICOM source whose path lies in the raw tree."""
    raw_root = (workspace / raw).resolve()
    out: dict[str, tuple[Path, Path]] = {}
    for name, cfg in sources.items():
        if getattr(cfg, "kind", None) != "dicom":
            continue
        path = Path(str(getattr(cfg, "path", "")))
        target = (path if path.is_absolute() else workspace / path).resolve()
        if target == raw_root or not target.is_relative_to(raw_root):
            continue
        out[name] = ((workspace / intake).resolve() / target.relative_to(raw_root), target)
    return out


def ingest(
    sources: Mapping[str, BaseModel],
    *,
    workspace: Path,
    raw: str,
    intake: str,
    key: bytes,
    secrets: Path,
    stamps: Path,
    burned_in: BurnedInPolicy = "mask",
    max_date_shift_days: int = 365,
    progress: Progress | None = None,
    force: bool = False,
) -> IngestReport:
    """De-identify every source's intake folder into its raw folder (see the module docstring)."""
    started = time.perf_counter()
    workspace = Path(workspace).resolve()
    report = IngestReport()
    names = PathPseudonyms(key, Path(secrets) / MAP_FILE)
    folders = intake_folders(sources, workspace, raw, intake)
    intake_root = (workspace / intake).resolve()
    claimed = {src for src, _ in folders.values()}
    if intake_root.is_dir():  # folders in the intake area no source reads: said, never ingested
        for child in sorted(intake_root.iterdir()):
            if not any(child == c or c.is_relative_to(child) for c in claimed):
                report.quarantined.append(
                    {
                        "source": "(none)",
                        "key": f"{intake}/{names.path(child.name)}",
                        "reason": "no DICOM source reads this intake folder (give a source the path "
                        f"{raw}/<folder>); not ingested",
                    }
                )
    try:
        for name, (src, dest) in folders.items():
            if not src.is_dir():
                continue
            cfg = sources[name]
            shift = getattr(cfg, "max_date_shift_days", None) or max_date_shift_days
            settings = {"burned_in": burned_in, "shift": shift, "source": name}
            stamp = _stamp(src, key, settings)
            stamp_file = Path(stamps) / f"{name}.json"
            if not force and _unchanged(stamp_file, stamp, dest):
                report.skipped.append(name)
                continue
            shown = src.relative_to(workspace).as_posix() if src.is_relative_to(workspace) else str(src)
            counts, bad = _ingest_folder(name, src, dest, key, names, burned_in, shift, shown, progress)
            report.sources[name] = counts
            report.quarantined.extend(bad)
            stamp_file.parent.mkdir(parents=True, exist_ok=True)
            stamp_file.write_text(json.dumps({"inputs": stamp, "output": _tree_hash(dest)}) + "\n")
    finally:
        names.save()
    report.seconds = round(time.perf_counter() - started, 3)
    return report


def _ingest_folder(
    source: str,
    src: Path,
    dest: Path,
    key: bytes,
    names: PathPseudonyms,
    burned_in: BurnedInPolicy,
    shift: int,
    shown_root: str,
    progress: Progress | None,
) -> tuple[dict[str, int], list[dict[str, str]]]:
    files = _files(src)
    counts = {"files": len(files), "written": 0, "masked": 0, "checked": 0, "quarantined": 0}
    bad: list[dict[str, str]] = []
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.ingest-{os.getpid()}-{_secrets.token_hex(4)}")
    tmp.mkdir()
    try:
        for done, path in enumerate(files, 1):
            rel = path.relative_to(src).as_posix()
            shown = f"{shown_root}/{names.path(rel)}"
            try:
                with quiet_pydicom():  # pydicom's warnings about a bad value quote the value: PHI
                    out_rel, data, outcome = _one_file(source, path, rel, key, burned_in, shift)
            except _Refused as e:
                counts["quarantined"] += 1
                bad.append({"source": source, "key": shown, "reason": f"{shown}: {e}"})
            else:
                target = tmp / out_rel
                target.parent.mkdir(parents=True, exist_ok=True)
                if target.exists():  # two intake files with one name after case folding
                    counts["quarantined"] += 1
                    bad.append({"source": source, "key": shown, "reason": f"{shown}: same file name as another "
                                "intake file of this patient when case is ignored; not ingested"})
                    continue
                target.write_bytes(data)
                counts["written"] += 1
                counts["masked"] += outcome == "masked"
                counts["checked"] += outcome in ("masked", "clean")
            if progress is not None:
                progress(f"ingest {source}", done, len(files))
        swap_folder(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return counts, bad


class _Refused(Exception):
    """An intake file that cannot enter the raw tree; the message never holds a header value or pixel text."""


def _one_file(
    source: str, path: Path, rel: str, key: bytes, burned_in: BurnedInPolicy, shift: int
) -> tuple[str, bytes, str]:
    """De-identify one intake file: (output path under the source's raw folder, bytes, burned-in outcome)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    from components.data.burned_in import clean_dataset, needs_check
    from components.data.deid import deidentify_dataset, mark_clean_pixels, pseudonym
    from components.data.images import error_detail

    if path.is_symlink():
        raise _Refused("a symbolic link (intake files must be real files)")
    try:
        ds = pydicom.dcmread(path)
    except InvalidDicomError:
        raise _Refused("not a DICOM file (only DICOM files are ingested; no other file leaves the intake)") from None
    except Exception as e:
        raise _Refused(f"unreadable DICOM header ({error_detail(e)})") from None
    try:
        if not any(t in ds for t in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
            raise _Refused("no pixel data")
        outcome = "unchecked"
        why = needs_check(ds)
        if why is not None:
            result = clean_dataset(ds, burned_in)
            if result.action == "quarantine":
                raise _Refused(f"{result.reason} (data.deid.burned_in: {burned_in})")
            outcome = result.action
            mark_clean_pixels(ds)  # checked (and masked where text was found): BurnedInAnnotation NO
        pid = str(ds.get("PatientID", "") or "").strip()
        study = str(ds.get("StudyInstanceUID", "") or "")
        patient = pid or (f"study:{study}" if study else f"file:{source}/{rel.casefold()}")
        deidentify_dataset(ds, key, max_date_shift_days=shift, patient_id=patient)
        _defined_terms_only(ds)
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
    except _Refused:
        raise
    except Exception as e:  # a malformed element or pixel data: quarantined by name, never a traceback
        raise _Refused(f"cannot be de-identified ({error_detail(e)})") from None
    file_id = "f-" + hmac.new(key, f"file:{source}/{rel.casefold()}".encode(), hashlib.sha256).hexdigest()[:16]
    return f"{pseudonym(key, patient)}/{file_id}.dcm", buf.getvalue(), outcome


def _defined_terms_only(ds: Any) -> None:
    """The basic profile keeps Modality and BodyPartExamined, which consoles let people type into: a value
    that is not one of the standard's defined terms is free text and does not leave the intake (Modality
    becomes OT, "other"; BodyPartExamined is emptied, its type 2 meaning "unknown")."""
    from components.data.defined_terms import OTHER, body_part_term, modality_term

    if "BodyPartExamined" in ds and body_part_term(ds.BodyPartExamined) == OTHER:
        ds.BodyPartExamined = ""
    if "Modality" in ds and modality_term(ds.Modality) == OTHER:
        ds.Modality = "OT"


def _files(folder: Path) -> list[Path]:
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        found.extend(Path(dirpath) / f for f in sorted(filenames) if not f.startswith("."))
    return found


def _stamp(src: Path, key: bytes, settings: Mapping[str, Any]) -> str:
    """What an ingest depends on: each intake file's path, size and modification time, the key's fingerprint,
    the settings and the code of the data package (a changed de-identification rule re-ingests)."""
    h = hashlib.sha256()
    for path in _files(src):
        st = path.lstat()
        h.update(f"{path.relative_to(src).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    h.update(hmac.new(key, b"medtune-ingest-stamp", hashlib.sha256).digest())
    h.update(json.dumps(dict(settings), sort_keys=True).encode())
    h.update(_tree_hash(Path(__file__).parent, "*.py").encode())
    from importlib.metadata import version

    h.update(f"{version('pydicom')} {version('dicom-anonymizer')} {version('rapidocr-onnxruntime')}".encode())
    return h.hexdigest()


def _unchanged(stamp_file: Path, stamp: str, dest: Path) -> bool:
    try:
        stored = json.loads(stamp_file.read_text())
    except (OSError, ValueError):
        return False
    return bool(stored.get("inputs") == stamp and dest.is_dir() and stored.get("output") == _tree_hash(dest))


def _tree_hash(folder: Path, pattern: str = "*") -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob(pattern) if p.is_file() and "__pycache__" not in p.parts):
        h.update(f"{path.relative_to(folder).as_posix()}\0".encode())
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def check_raw_deidentified(folder: Path, *, limit: int = 5) -> list[str]:
    """Relative paths (pseudonymised by the caller) of DICOM files in a raw folder that medtune did not
    de-identify: the guard that keeps identified files out of ``dvc commit``."""
    import pydicom

    found: list[str] = []
    for path in _files(folder):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["PatientIdentityRemoved"])
        except Exception:
            continue  # not DICOM: the reader quarantines it by name
        if str(ds.get("PatientIdentityRemoved", "")).upper() != "YES":
            found.append(path.relative_to(folder).as_posix())
            if len(found) >= limit:
                break
    return found


def raise_if_identified(folder: Path, shown: str, key: bytes, intake: str) -> None:
    """DataError when the raw folder holds DICOM files that were not de-identified (names pseudonymised)."""
    from components.data.pseudonyms import path_pseudonym

    found = check_raw_deidentified(folder)
    if found:
        raise DataError(
            f"{shown} holds DICOM files that are not de-identified ({', '.join(path_pseudonym(key, f) for f in found)}"
            f"{' ...' if len(found) >= 5 else ''}); move the folder's files to {intake}/{Path(shown).name}/ and run "
            "`medtune data ingest` (identified files are never versioned)"
        )
