"""Load ``records.jsonl`` leniently into a pandas DataFrame with the columns the validation suite checks.

Nothing here raises on bad data: a line that is not JSON, a record with a missing key, an unknown modality or a
missing image becomes a row whose derived columns say so, and the Great Expectations suite
(:mod:`components.validation.suite`) turns those rows into named failures. Only a records file that cannot be
read at all raises (``OSError``).

Conventions the suite relies on:

- ``row`` is the 1-based line number in the records file (blank lines are skipped, not counted as rows);
- a derived check column holds ``True``/``False``, or ``None`` where the check does not apply because a
  prerequisite already failed (no image file -> no decode check); GE skips nulls in column-map expectations,
  so one broken thing is reported once;
- every ``*_detail`` column says *why* a row failed, in words that never repeat PHI;
- a record has zero, one or several input images (issue 16): the image columns hold one value for all of a
  row's images (``image_exists`` is True when every file exists ...), the detail names each failing one
  (``image[1] images/ab/...png: file not found`` in a list), and a text-only row leaves them null;
- ``image_leakage`` names each of the row's image hashes (input or target) that records of another group hold
  in another split, with their ids (issue 18: BreastMNIST's byte-identical train-00115 and test-00076); empty
  when none, null for a row without hashes or without a valid split;
- ``is_<split>`` are 0/1 split indicators for the records medtune split itself; a record whose source gave its
  split (a non-empty ``meta.official_split``) is null there and 0/1 in ``official_<split>`` instead, so the
  configured ratios are checked only where medtune chose the split (issue 18).

Use it on its own to look at a dataset::

    from components.validation.frame import load_records_frame
    df = load_records_frame(Path("data/vlhealth/records.jsonl"))
    print(df[~df.image_exists.astype(bool)][["row", "id", "image_detail"]])
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image
from pydantic import ValidationError

from components.data.phi import find_phi
from components.data.records import GENERATION_KINDS, IMAGE_TOKEN, SPLITS, Record, record_images

#: Record fields copied into the frame as text (non-string values are JSON-encoded; the schema check flags them).
TEXT_FIELDS = (
    "id", "source", "license", "image", "image_sha256", "modality", "body_part", "task", "kind",
    "target_image", "target_image_sha256", "group", "split",
)  # fmt: skip
#: Contract fields whose allowed values have expectations of their own: the schema check leaves them out.
VALUE_FIELDS = ("modality", "task", "kind", "split")
#: Row key (not a column) that carries a record's image hashes from ``_row`` to ``_image_leakage``.
_HASHES = "_image_hashes"
#: How many record ids an ``image_leakage`` entry names per split before it says "and N more".
LEAK_IDS_SHOWN = 3


@dataclass(frozen=True)
class ImageCheck:
    """What was found for one referenced image file."""

    exists: bool | None  # None: no usable path in the record
    decodes: bool | None  # None: not checked (no file)
    sha256: str | None
    detail: str  # empty when the file exists and decodes


class ImageProbe:
    """Checks image files under ``root`` once each (many records share one image)."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self._cache: dict[str, ImageCheck] = {}

    def check(self, rel: object) -> ImageCheck:
        if not isinstance(rel, str):
            return ImageCheck(None, None, None, "no image path")
        if not rel.strip():
            return ImageCheck(False, None, None, f"{rel!r}: empty image path")
        if rel not in self._cache:
            self._cache[rel] = self._probe(rel)
        return self._cache[rel]

    def _probe(self, rel: str) -> ImageCheck:
        if Path(rel).is_absolute():
            return ImageCheck(False, None, None, f"{rel}: absolute path (must be relative to the dataset root)")
        path = (self.root / rel).resolve()
        if not path.is_relative_to(self.root):
            return ImageCheck(False, None, None, f"{rel}: path escapes the dataset root")
        if not path.is_file():
            return ImageCheck(False, None, None, f"{rel}: file not found")
        with path.open("rb") as fh:
            sha = hashlib.file_digest(fh, "sha256").hexdigest()
        try:
            with Image.open(path) as im:
                im.load()
        except Exception as exc:  # Pillow raises many types for truncated or foreign files
            return ImageCheck(True, False, sha, f"{rel}: cannot decode ({type(exc).__name__}: {exc})")
        return ImageCheck(True, True, sha, "")


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, default=str)


def _schema_errors(obj: dict[str, Any]) -> str:
    """Contract violations other than allowed values: missing/unknown keys, wrong types, malformed turns."""
    try:
        Record.model_validate(obj)
    except ValidationError as exc:
        msgs = [
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}"
            for err in exc.errors()
            if not (err["type"] == "literal_error" and len(err["loc"]) == 1 and err["loc"][0] in VALUE_FIELDS)
        ]
        return "; ".join(msgs)
    return ""


def _turns(obj: dict[str, Any]) -> list[tuple[str, str]] | None:
    conv = obj.get("conversations")
    if not isinstance(conv, list):
        return None
    return [(str(t.get("from")), t["value"]) for t in conv if isinstance(t, dict) and isinstance(t.get("value"), str)]


def _images_of(obj: dict[str, Any]) -> list[str] | None:
    """The record's image paths ([] for a text-only record), or None when ``image`` has no valid shape (the
    schema check reports that; the image checks then do not apply)."""
    try:
        return record_images(obj)
    except TypeError:
        return None


def _token_check(turns: list[tuple[str, str]] | None, obj: dict[str, Any]) -> tuple[bool | None, str]:
    """One ``<image>`` per image in the human turns, none in gpt turns; one image: the first human turn starts
    with ``<image>\\n`` (the rule before issue 16)."""
    images = _images_of(obj)
    if not turns or images is None:
        return None, ""
    speaker, first = turns[0]
    if speaker != "human":
        return False, f"first turn is from {speaker!r}, not 'human'"
    for i, (speaker, value) in enumerate(turns):
        if speaker != "human" and IMAGE_TOKEN in value:
            return False, f"turn {i} ({speaker}) holds {IMAGE_TOKEN!r}; only human turns mark images"
    count = sum(value.count(IMAGE_TOKEN) for speaker, value in turns if speaker == "human")
    if isinstance(obj.get("image"), str):
        if not first.startswith(IMAGE_TOKEN + "\n"):
            return False, f"first human turn does not start with {IMAGE_TOKEN!r} and a newline"
        if count != 1:
            return False, f"{IMAGE_TOKEN!r} appears {count} times in the conversation (expected once)"
    elif count != len(images):
        what = f"{len(images)} images in field image" if images else "no image (a text-only record)"
        return False, f"{IMAGE_TOKEN!r} appears {count} times in the human turns for {what}"
    return True, ""


def _shape_check(obj: dict[str, Any]) -> tuple[bool | None, str]:
    """``image_sha256`` has the shape of ``image``: a string for one image, a list of the same length for
    several, nothing for none."""
    image, sha = obj.get("image"), obj.get("image_sha256")
    images = _images_of(obj)
    if images is None:
        return None, ""
    if image is None or image == []:
        return (True, "") if sha is None else (False, "a record without an image carries image_sha256")
    if isinstance(image, str):
        return (True, "") if isinstance(sha, str) else (False, f"one image but image_sha256 is {_shape(sha)}")
    if isinstance(sha, list) and len(sha) == len(images):
        return True, ""
    return False, f"{len(images)} images in field image but image_sha256 is {_shape(sha)}"


def _shape(value: Any) -> str:
    if value is None:
        return "missing"
    if isinstance(value, list):
        return f"a list of {len(value)}"
    return f"a {type(value).__name__}"


def _image_columns(obj: dict[str, Any], probe: ImageProbe, shape_ok: bool | None) -> dict[str, Any]:
    """``image_exists``/``image_decodes``/``image_hash_matches`` over all of the row's images (null for a
    text-only row, and where a prerequisite failed), and ``image_detail`` naming each failing image."""
    images = _images_of(obj)
    if not images:
        return {"image_exists": None, "image_decodes": None, "image_hash_matches": None, "image_detail": ""}
    several = isinstance(obj.get("image"), list)
    found = [probe.check(rel) for rel in images]

    def named(i: int, text: str) -> str:
        return f"image[{i}] {text}" if several else text

    if not all(f.exists for f in found):
        missing = [named(i, f.detail) for i, f in enumerate(found) if not f.exists]
        return {"image_exists": False, "image_decodes": None, "image_hash_matches": None,
                "image_detail": "; ".join(missing)}  # fmt: skip
    problems = [named(i, f.detail) for i, f in enumerate(found) if not f.decodes]
    hash_ok: bool | None = None
    if shape_ok:
        recorded = obj.get("image_sha256")
        wanted = [recorded] if isinstance(recorded, str) else list(recorded or [])
        bad = [(i, f.sha256 or "", want) for i, (f, want) in enumerate(zip(found, wanted, strict=True))
               if f.sha256 != want]  # fmt: skip
        hash_ok = not bad
        problems += [named(i, f"{images[i]}: sha256 {got[:12]}... != recorded {(_text(want) or 'none')[:12]}...")
                     for i, got, want in bad]  # fmt: skip
    return {"image_exists": True, "image_decodes": all(f.decodes for f in found), "image_hash_matches": hash_ok,
            "image_detail": "; ".join(problems)}  # fmt: skip


def _generation_input_check(obj: dict[str, Any]) -> tuple[bool | None, str]:
    """A generation record has an input image, unless it is ``text_to_image`` (text in, image out)."""
    task, kind, images = obj.get("task"), obj.get("kind"), _images_of(obj)
    if (task is None and kind is None) or images is None:
        return None, ""
    if (task == "generation" or kind in GENERATION_KINDS) and kind != "text_to_image" and not images:
        return False, f"generation record of kind {kind!r} has no input image"
    return True, ""


def _target_check(obj: dict[str, Any], probe: ImageProbe) -> tuple[bool | None, str]:
    task, kind = obj.get("task"), obj.get("kind")
    if task is None and kind is None:
        return None, ""
    target = obj.get("target_image")
    if task == "generation" or kind in GENERATION_KINDS:
        if not isinstance(target, str) or not target:
            return False, "generation record has no target_image"
        found = probe.check(target)
        if not found.exists or not found.decodes:
            return False, f"target {found.detail}"
        if found.sha256 != obj.get("target_image_sha256"):
            return False, f"{target}: sha256 {found.sha256[:12] if found.sha256 else None} != recorded target"
        return True, ""
    # A comprehension record must not point at a target (trainers would treat it as a generation pair).
    if target is not None or obj.get("target_image_sha256") is not None:
        return False, "comprehension record carries a target image"
    return True, ""


def _phi_scan(obj: dict[str, Any], turns: list[tuple[str, str]] | None) -> str:
    """Names of PHI patterns per field (``question: mrn``), never the matched text itself."""
    fields: list[tuple[str, str]] = []
    for i, (speaker, value) in enumerate(turns or []):
        fields.append(("question" if i == 0 else "answer" if i == 1 else f"turn {i} ({speaker})", value))
    if isinstance(obj.get("body_part"), str):
        fields.append(("body_part", obj["body_part"]))
    for section in ("meta", "features"):
        if isinstance(obj.get(section), dict):
            fields += [(f"{section}.{k}", v) for k, v in obj[section].items() if isinstance(v, str)]
    hits = [f"{name}: {','.join(found)}" for name, text in fields if (found := find_phi(text))]
    return "; ".join(hits)


def _image_hashes(obj: dict[str, Any]) -> list[tuple[str, str]]:
    """``(field, sha256)`` for every image hash the record names: ``image_sha256`` (one, or each of a list) and
    ``target_image_sha256``. Malformed entries are left out (the shape and format checks report them)."""
    found: list[tuple[str, str]] = []
    sha = obj.get("image_sha256")
    if isinstance(sha, str) and sha:
        found.append(("image_sha256", sha))
    elif isinstance(sha, list):
        found += [(f"image_sha256[{i}]", s) for i, s in enumerate(sha) if isinstance(s, str) and s]
    target = obj.get("target_image_sha256")
    if isinstance(target, str) and target:
        found.append(("target_image_sha256", target))
    return found


def _official_split(obj: dict[str, Any]) -> str | None:
    """The split the record's source gave it (``meta.official_split``), or None where medtune chose it."""
    meta = obj.get("meta")
    value = meta.get("official_split") if isinstance(meta, dict) else None
    if value is None or (isinstance(value, str) and not value.strip()) or value in ([], {}):
        return None
    return _text(value)


def _row(line_no: int, line: str, probe: ImageProbe) -> dict[str, Any]:
    row: dict[str, Any] = {"row": line_no}
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        return row | {"json_ok": False, "json_detail": f"not valid JSON ({exc.msg} at column {exc.colno})"}
    if not isinstance(obj, dict):
        return row | {"json_ok": False, "json_detail": f"a JSON {type(obj).__name__}, not an object"}
    row |= {"json_ok": True, "json_detail": ""}
    row |= {name: _text(obj.get(name)) for name in TEXT_FIELDS}
    row["schema_errors"] = _schema_errors(obj)
    turns = _turns(obj)
    row["question"] = turns[0][1].replace(IMAGE_TOKEN, "").strip() if turns else ""
    row["answer"] = turns[1][1].strip() if turns and len(turns) > 1 else ""
    row["image_token_ok"], row["image_token_detail"] = _token_check(turns, obj)
    task, kind = obj.get("task"), obj.get("kind")
    if isinstance(task, str) and isinstance(kind, str):
        row["task_kind_ok"] = (task == "generation") == (kind in GENERATION_KINDS)
    row["generation_input_ok"], row["generation_input_detail"] = _generation_input_check(obj)
    row["image_sha256_shape_ok"], row["image_sha256_shape_detail"] = _shape_check(obj)
    row |= _image_columns(obj, probe, row["image_sha256_shape_ok"])
    row["target_ok"], row["target_detail"] = _target_check(obj, probe)
    row["phi_found"] = _phi_scan(obj, turns)
    row["official_split"] = _official_split(obj)
    row[_HASHES] = _image_hashes(obj)
    return row


#: Column order of the frame (every column exists even when no row sets it).
COLUMNS = (
    ["row", "json_ok", "json_detail", *TEXT_FIELDS, "schema_errors", "question", "answer", "image_token_ok",
     "image_token_detail", "task_kind_ok", "generation_input_ok", "generation_input_detail", "image_sha256_shape_ok",
     "image_sha256_shape_detail", "image_exists", "image_decodes", "image_hash_matches", "image_detail",
     "target_ok", "target_detail", "phi_found", "official_split", "group_split_count", "group_detail",
     "image_leakage"]
    + [f"is_{split}" for split in SPLITS]
    + [f"official_{split}" for split in SPLITS]
)  # fmt: skip


def _add_group_columns(df: pd.DataFrame) -> None:
    """``group_split_count``: distinct splits the row's group occurs in; ``is_<split>``: 0/1 split indicators."""
    splits_of: dict[str, set[str]] = defaultdict(set)
    for group, split in zip(df["group"], df["split"], strict=True):
        if isinstance(group, str) and split in SPLITS:
            splits_of[group].add(split)
    counts, details = [], []
    for group in df["group"]:
        splits = splits_of.get(group) if isinstance(group, str) else None
        counts.append(len(splits) if splits else None)
        details.append(f"group {group!r} is in {', '.join(sorted(splits))}" if splits and len(splits) > 1 else "")
    df["group_split_count"] = pd.Series(counts, index=df.index, dtype=object)
    df["group_detail"] = pd.Series(details, index=df.index, dtype=object)
    official = [ok is True and isinstance(o, str) for ok, o in zip(df.json_ok, df.official_split, strict=True)]
    for split in SPLITS:
        # Non-JSON rows stay null (outside the denominator); a record with a bad split counts in none. A record
        # split by its source counts in official_<split> only: the configured ratios are medtune's to keep.
        df[f"is_{split}"] = [None if ok is not True or off else float(s == split)
                             for ok, off, s in zip(df.json_ok, official, df.split, strict=True)]  # fmt: skip
        df[f"official_{split}"] = [float(s == split) if off else None
                                   for off, s in zip(official, df.split, strict=True)]  # fmt: skip


def _some(ids: list[str]) -> str:
    shown = ", ".join(ids[:LEAK_IDS_SHOWN])
    return shown if len(ids) <= LEAK_IDS_SHOWN else f"{shown} and {len(ids) - LEAK_IDS_SHOWN} more"


def _image_leakage(rows: list[dict[str, Any]]) -> list[str | None]:
    """Per row: each of its image hashes that a record of *another group* holds in *another split*, with those
    records' ids; "" when none. An image shared by one group's records in two splits is left to the group
    check (one broken thing, one failure). Null where the row has no hash or no valid split."""

    def group_of(row: dict[str, Any]) -> object:
        return row["group"] if isinstance(row.get("group"), str) else ("line", row["row"])  # no group: its own

    # hash -> split -> [(group, id)], and how many of those entries each group holds
    where: dict[str, dict[str, list[tuple[object, str]]]] = defaultdict(lambda: defaultdict(list))
    per_group: dict[tuple[str, str, object], int] = defaultdict(int)
    for row in rows:
        split = row.get("split")
        if split not in SPLITS:
            continue
        group, label = group_of(row), row["id"] if isinstance(row.get("id"), str) else f"line {row['row']}"
        for sha in dict.fromkeys(sha for _, sha in row.get(_HASHES) or []):
            where[sha][split].append((group, label))
            per_group[sha, split, group] += 1
    out: list[str | None] = []
    for row in rows:
        hashes, split = row.get(_HASHES) or [], row.get("split")
        if not hashes or split not in SPLITS:
            out.append(None)
            continue
        group, problems = group_of(row), []
        for field, sha in hashes:
            elsewhere = []
            for other, entries in sorted(where[sha].items()):
                if other == split or len(entries) == per_group[sha, other, group]:
                    continue
                ids = list(dict.fromkeys(label for g, label in entries if g != group))
                elsewhere.append(f"{other} ({_some(ids)})")
            if elsewhere:
                problems.append(f"{field} {sha} is also in {'; '.join(elsewhere)}")
        out.append("; ".join(problems))
    return out


def load_records_frame(records_file: Path, image_root: Path | None = None) -> pd.DataFrame:
    """One row per non-blank line of ``records_file``; image paths resolve against ``image_root``
    (default: the records file's folder)."""
    probe = ImageProbe(image_root if image_root is not None else records_file.parent)
    rows: list[dict[str, Any]] = []
    with records_file.open("rb") as fh:
        for line_no, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                rows.append({"row": line_no, "json_ok": False, "json_detail": f"not UTF-8 ({exc.reason})"})
                continue
            rows.append(_row(line_no, line, probe))
    df = pd.DataFrame(rows, columns=COLUMNS, dtype=object)
    df["row"] = df["row"].astype("int64")
    df["image_leakage"] = pd.Series(_image_leakage(rows), index=df.index, dtype=object)
    _add_group_columns(df)
    return df
