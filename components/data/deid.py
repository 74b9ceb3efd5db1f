"""De-identification of DICOM headers: the Basic Application Level Confidentiality Profile (DICOM PS3.15 Annex E,
table E.1-1) with the "Retain Longitudinal Temporal Information with Modified Dates" option, keyed by medtune's
secret (issue 18).

The action table is not ours: it is the E.1-1 table of the newest standard release that dicom-anonymizer
(KitwareMedical, import name ``dicomanonymizer``) ships, :data:`DATABASE` (652 attributes plus the curve and
overlay groups). Each of its actions maps to medtune's (:data:`POLICY`); per dataset (:func:`deidentify_dataset`):

* X (remove), and the X/Z, X/D, X/Z/D choices: deleted, sequences with everything in them;
* Z (empty), and Z/D: kept with a zero-length value (a sequence with no items);
* D (dummy): the library's dummy for the VR ("ANONYMIZED", "0", ...); a sequence keeps its items with every value
  inside replaced the same way;
* U, and every other UID anywhere that is not a well-known DICOM UID (file meta included): the keyed
  :func:`remap_uid`, so references between the files of one study stay consistent and output is deterministic;
  X/Z/U* (Referenced/Source Image Sequence): kept, cleaned inside;
* PatientName and PatientID: the keyed :func:`pseudonym` (also the record's ``group``); any other person name
  anywhere (VR PN) is emptied;
* dates and times, whatever the table says (the option keeps them, modified): every DA and the date part of every
  DT move back by the per-patient :func:`date_shift_days`; times of day (TM, the time part of DT) stay, so
  intervals survive; a value that does not parse is emptied; PatientBirthDate is emptied, PatientBirthTime deleted;
* private tags and the overlay (60xx) and curve (50xx) groups are deleted at every level; the table's actions
  apply inside every sequence that is kept; pixel data is never read (deferred elements stay on disk);
* PatientIdentityRemoved, DeidentificationMethod (:data:`METHOD`), DeidentificationMethodCodeSequence (CID 7050:
  113100 basic profile, 113107 modified dates) and LongitudinalTemporalInformationModified record what was done;
  :func:`mark_clean_pixels` adds 113101 (Clean Pixel Data) once burned-in text has been checked or masked, before
  or after :func:`deidentify_dataset` (which keeps that one code of an earlier sequence and replaces the rest).

Why dicom-anonymizer (2.1.0), read against the others' code (issue 18): it is the only one that ships the E.1-1
table itself, one module per standard release (2023, 2024b, 2026c), with its action per attribute. pydicom/deid
(0.4.13) works from recipe files whose default ``deid.dicom`` header section is ~70 name-pattern rules
(``REMOVE endswith:Date``, ``contains:UID`` -- SOP class UIDs too --, ``endswith:ID`` ...), not the table: following
E.1-1 there means writing and keeping a 650-line recipe ourselves. dicognito (0.19.0) makes realistic fake
values, but from its own short keyword lists plus every PN/UI/DA/DT; it keeps private tags and free text
(descriptions, comments), and shifts every date by one offset per Anonymizer (from its seed), not per patient.

What medtune does itself, and why: the library's ``anonymize_dataset`` applies its per-tag actions to the top level
only (a kept sequence is not cleaned inside), replaces UIDs with random ones (not reproducible), writes 00010101
for dated D/Z actions (and for X on a DA, which it keeps), loops over all 655 rules per dataset, and removes
private tags and the repeating groups through ``Dataset.walk``, which reads every deferred element -- the pixel
data. So medtune walks the elements present once, level by level, and looks each up in the library's table
(:func:`table`). Nothing of the library prints on this path, and the warnings and log lines pydicom emits about
invalid values while they are read (they quote the value) are silenced for the call.

    from components.data.deid import deidentify_dataset, load_deid_key, pseudonym
    key = load_deid_key("MEDTUNE_DEID_KEY", Path(".medtune/secrets/deid.key"))
    group = pseudonym(key, str(ds.PatientID)); deidentify_dataset(ds, key)

    .venv/bin/pytest tests/unit/data/test_dicom_deid.py -q
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import hmac
import io
import logging
import os
import re
import secrets
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

#: The library's newest E.1-1 table (``dicomanonymizer.dicom_anonymization_databases.<DATABASE>``).
DATABASE = "dicomfields_2026c"
METHOD = f"PS3.15 E.1-1 {DATABASE.rsplit('_', 1)[-1]} basic profile, modified dates, keyed UIDs"  # LO: <= 64

#: medtune's action for each of the library's actions (by function name): where the table allows a choice (X/Z,
#: X/D, ...) medtune takes the first, as its records never need the attribute; Z/D takes Z (type 2 is enough).
POLICY: dict[str, str] = {
    "delete": "X",
    "empty": "Z",
    "replace": "D",
    "replace_UID": "U",
    "empty_or_replace": "Z",
    "delete_or_empty": "X",
    "delete_or_replace": "X",
    "delete_or_empty_or_replace": "X",
    "delete_or_empty_or_replace_UID": "U*",
}

#: CID 7050 codes (DCM) recorded in DeidentificationMethodCodeSequence.
CODES = {
    "113100": "Basic Application Confidentiality Profile",
    "113101": "Clean Pixel Data Option",
    "113107": "Retain Longitudinal Temporal Information Modified Dates Option",
}

_PSEUDONYM_HEX = 16
_PATIENT_NAME, _PATIENT_ID, _BIRTH_DATE, _BIRTH_TIME = 0x00100010, 0x00100020, 0x00100030, 0x00100032
_PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})  # never read: a deferred element stays on disk
_META_AE_TITLES = (0x00020016, 0x00020017, 0x00020018)  # source/sending/receiving AE: station names
_DATE_VRS = ("DA", "DT", "TM")
#: VRs whose dummy comes from the library's ``replace_element`` (fixed values; UI, dates and SQ are medtune's).
_LIBRARY_DUMMY_VRS = frozenset(
    ("AE", "AS", "CS", "DS", "FD", "FL", "IS", "LO", "LT", "OB", "SH", "SL", "SS", "ST", "UC", "UL", "UN", "UR",
     "US", "UT")
)  # fmt: skip
_TIME = re.compile(r"\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?")
_DT_TAIL = re.compile(r"(\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?)?([+-]\d{4})?")


def pseudonym(key: bytes, patient_id: str) -> str:
    """Keyed, stable pseudonym of a patient id: ``pt-`` + 16 hex digits of HMAC-SHA256(key, id)."""
    return "pt-" + hmac.new(key, patient_id.encode("utf-8"), hashlib.sha256).hexdigest()[:_PSEUDONYM_HEX]


def date_shift_days(key: bytes, patient_id: str, max_days: int) -> int:
    """Days (1..max_days) by which this patient's dates move back; the same for all files of the patient."""
    digest = hmac.new(key, b"date-shift:" + patient_id.encode("utf-8"), hashlib.sha256).digest()
    return 1 + int.from_bytes(digest[:8], "big") % max(1, max_days)


def remap_uid(key: bytes, uid: str) -> str:
    """A keyed replacement UID under the UUID-derived root 2.25 (at most 44 characters)."""
    digest = hmac.new(key, b"uid:" + uid.encode("ascii", "replace"), hashlib.sha256).digest()
    return f"2.25.{int.from_bytes(digest[:16], 'big')}"


def load_deid_key(env_var: str, key_file: Path) -> bytes:
    """The secret key for pseudonyms: ``$env_var`` when set, else ``key_file`` (created once with 32 random
    bytes, mode 0600). The key is never logged; errors name the variable or file, not the value."""
    value = os.environ.get(env_var)
    if value:
        if len(value) < 16:
            raise ValueError(f"${env_var} holds a de-identification key shorter than 16 characters; use a longer one")
        return value.encode("utf-8")
    key_file = Path(key_file)
    if not key_file.exists():
        key_file.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process created it first: read theirs
        else:
            with os.fdopen(fd, "wb") as f:
                f.write(secrets.token_bytes(32))
    data = key_file.read_bytes()
    if len(data) < 16:
        raise ValueError(f"de-identification key file {key_file} holds under 16 bytes; delete it to make a new one")
    return data


@lru_cache(maxsize=1)
def table() -> dict[int, str]:
    """The library's E.1-1 table as medtune's actions, ``{tag: "X" | "Z" | "D" | "U" | "U*"}``. Its repeating-group
    rules (curve data 50xx, overlay data and comments 60xx) are applied as whole-group deletions."""
    from dicomanonymizer.simpledicomanonymizer import initialize_actions

    with contextlib.redirect_stdout(io.StringIO()):  # the selector prints when a database lacks a category
        rules = initialize_actions(DATABASE)
    unknown = sorted({f.__name__ for f in rules.values()} - POLICY.keys())
    odd = [t for t, f in rules.items() if len(t) == 4 and not (_is_removed_group(t[0]) and f.__name__ == "delete")]
    if unknown or odd:  # a newer table than this code knows: fail loudly rather than skip attributes
        what = unknown or [tuple(hex(n) for n in t) for t in odd]
        raise RuntimeError(f"dicom-anonymizer's {DATABASE} has actions or repeating groups medtune lacks: {what}")
    return {(t[0] << 16) | t[1]: POLICY[f.__name__] for t, f in rules.items() if len(t) == 2}


def _is_removed_group(group: int) -> bool:
    return 0x5000 <= group <= 0x50FF or 0x6000 <= group <= 0x60FF  # curves, overlays


@dataclass(frozen=True)
class _Run:
    key: bytes
    days: int
    pseudonym: str
    tags: dict[int, str]


def deidentify_dataset(ds: Any, key: bytes, *, max_date_shift_days: int = 365, patient_id: str | None = None) -> Any:
    """De-identify a pydicom Dataset in place and return it (see the module docstring for what changes).

    ``patient_id`` overrides the id the pseudonym and date shift derive from (default: the PatientID element).
    """
    pid = patient_id if patient_id is not None else str(ds.get("PatientID", "") or "").strip()
    clean_pixels = _has_code(ds, "113101")  # mark_clean_pixels may come first (the intake masks, then calls us)
    run = _Run(key, date_shift_days(key, pid, max_date_shift_days), pseudonym(key, pid), table())
    with quiet_pydicom():
        _clean(ds, run, top=True, dummy=False)
        meta = getattr(ds, "file_meta", None)
        if meta is not None:
            _clean(meta, run, top=False, dummy=False)  # MediaStorageSOPInstanceUID: U, like SOPInstanceUID
            for tag in _META_AE_TITLES:
                if tag in meta:
                    del meta[tag]
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = METHOD
    codes = ["113100", "113107", *(["113101"] if clean_pixels else [])]  # nobody else's claims are kept
    ds.DeidentificationMethodCodeSequence = [_code(c) for c in codes]
    ds.LongitudinalTemporalInformationModified = "MODIFIED"
    return ds


def mark_clean_pixels(ds: Any) -> Any:
    """Record that the pixels were checked for burned-in text and masked where it was found (CID 7050 113101,
    Clean Pixel Data Option; BurnedInAnnotation NO). Before or after :func:`deidentify_dataset`."""
    if not _has_code(ds, "113101"):
        ds.DeidentificationMethodCodeSequence = [*(ds.get("DeidentificationMethodCodeSequence") or []), _code("113101")]
    ds.BurnedInAnnotation = "NO"
    return ds


def _has_code(ds: Any, value: str) -> bool:
    return any(str(item.get("CodeValue", "")) == value for item in ds.get("DeidentificationMethodCodeSequence") or [])


@contextlib.contextmanager
def quiet_pydicom() -> Iterator[None]:
    """No warning and no log line while values are read: pydicom's messages about an invalid value quote it (PHI);
    both go through process-wide switches, restored on exit (readers run in one thread per process)."""
    logger = logging.getLogger("pydicom")
    disabled, logger.disabled = logger.disabled, True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.disabled = disabled


def _code(value: str) -> Any:
    from pydicom.dataset import Dataset

    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "DCM", CODES[value]
    return item


def _clean(ds: Any, run: _Run, *, top: bool, dummy: bool) -> None:
    """One level of a dataset; recurses into the sequences it keeps. ``dummy``: inside a D sequence."""
    for tag in list(ds.keys()):
        if tag.is_private or _is_removed_group(tag.group):
            del ds[tag]  # at every level
            continue
        if tag in _PIXEL_TAGS:
            continue
        action, vr = run.tags.get(tag), _vr(ds, tag)
        if top and tag in (_PATIENT_NAME, _PATIENT_ID):
            ds[tag] = _element(tag, vr, run.pseudonym)
        elif tag == _BIRTH_DATE:
            ds[tag] = _element(tag, vr, "")
        elif tag == _BIRTH_TIME:
            del ds[tag]
        elif vr in _DATE_VRS:  # the modified-dates option keeps every date and time, whatever the table says
            _shift(ds[tag], run.days)
        elif action == "X":
            del ds[tag]
        elif vr == "PN":
            ds[tag] = _element(tag, vr, "")
        elif dummy or action == "D":
            _dummy(ds, tag, vr, run)
        elif action == "Z":
            ds[tag] = _element(tag, vr, None)
        elif vr == "UI":  # U, X/Z/U*, or any other UID
            _remap(ds[tag], run.key)
        elif vr == "SQ":  # X/Z/U*, or not in the table: kept, cleaned inside
            for item in ds[tag].value or []:
                _clean(item, run, top=False, dummy=False)
        elif action is not None:  # U or U* on an element that is not a UID: emptied
            ds[tag] = _element(tag, vr, None)


def _dummy(ds: Any, tag: int, vr: str, run: _Run) -> None:
    """The table's D: the library's dummy for the VR; UIDs keyed, sequences kept with dummies inside."""
    from dicomanonymizer.simpledicomanonymizer import replace_element

    if vr == "UI":
        _remap(ds[tag], run.key)
    elif vr == "SQ":
        for item in ds[tag].value or []:
            _clean(item, run, top=False, dummy=True)
    elif vr in _LIBRARY_DUMMY_VRS:
        elem = _element(tag, vr, None)
        replace_element(elem)  # "ANONYMIZED", "0", 0, "000Y", b"Anonymized", ...: no randomness for these VRs
        ds[tag] = elem
    else:  # a VR the library has no dummy for (OW, OF, AT ...): emptied
        ds[tag] = _element(tag, vr, None)


def _vr(ds: Any, tag: int) -> str:
    """The element's VR without reading a deferred value (implicit VR files: from the dictionary)."""
    from pydicom.datadict import dictionary_VR

    vr = ds.get_item(tag, keep_deferred=True).VR
    if vr in (None, "UN"):
        with contextlib.suppress(KeyError):
            return str(dictionary_VR(tag))
    return str(vr or "UN")


def _element(tag: int, vr: str, value: Any) -> Any:
    from pydicom.dataelem import DataElement

    elem = DataElement(tag, vr, value)
    if value is None:
        elem.value = elem.empty_value
    return elem


def _values(elem: Any) -> list[str]:
    from pydicom.multival import MultiValue

    value = elem.value
    return [str(v) for v in value] if isinstance(value, MultiValue) else [str(value)]


def _set(elem: Any, values: list[str]) -> None:
    elem.value = values if len(values) > 1 else values[0]


def _shift(elem: Any, days: int) -> None:
    if not elem.value:
        return
    if elem.VR == "TM":
        _set(elem, [v.strip() if _TIME.fullmatch(v.strip()) else "" for v in _values(elem)])
    else:
        _set(elem, [_shift_date(v.strip(), days, dated_time=elem.VR == "DT") for v in _values(elem)])


def _shift_date(text: str, days: int, *, dated_time: bool) -> str:
    """``text`` (DA, or DT with ``dated_time``) moved back ``days``; "" when it does not parse."""
    head, tail = text[:8], text[8:]
    if len(head) < 8 or not head.isdigit() or (tail and not (dated_time and _DT_TAIL.fullmatch(tail))):
        return ""  # unparseable or partial (a DT of only YYYY): dropped rather than kept
    try:
        day = dt.date(int(head[:4]), int(head[4:6]), int(head[6:8])) - dt.timedelta(days=days)
    except (ValueError, OverflowError):
        return ""
    return f"{day.year:04d}{day.month:02d}{day.day:02d}{tail}"


def _remap(elem: Any, key: bytes) -> None:
    if not elem.value:
        return
    _set(elem, [v if _is_known_uid(v) else remap_uid(key, v) for v in _values(elem)])


@lru_cache(maxsize=4096)
def _is_known_uid(value: str) -> bool:
    """A UID the standard defines (SOP classes, transfer syntaxes, coding schemes ...): not an identifier."""
    from pydicom.uid import UID

    return value.startswith("1.2.840.10008.") or UID(value).name != value
