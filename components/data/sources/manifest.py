"""Helpers shared by the manifest-based readers (vqa_rad, slake, llava_json, medmnist): config paths, JSON
manifests with errors that name file and position, required fields, modality labels, record features."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from components.data.records import MODALITIES
from components.data.sources.base import DataError

_MODALITY_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("CT", re.compile(r"\bct\b|\bcta\b|computed tomography", re.I)),
    ("MRI", re.compile(r"\bmri?\b|magnetic resonance|\bflair\b|\bt[12][- ]weighted\b", re.I)),
    ("X-ray", re.compile(r"x-?\s?ray|radiograph|\bxr\b|\bcxr\b|\bdx\b|\bcr\b|plain film|mammogra", re.I)),
    ("ultrasound", re.compile(r"ultrasound|sonograph|\bus\b|echocardiogra", re.I)),
    ("pathology", re.compile(r"patholog|histolog|microscop|\bwsi\b|h&e|cytolog", re.I)),
)


def normalise_modality(value: object) -> str:
    """Map a source's modality label onto :data:`MODALITIES` ("X-Ray" -> "X-ray"); unknown -> "other"."""
    text = str(value or "").strip()
    for allowed in MODALITIES:
        if text.lower() == allowed.lower():
            return allowed
    for modality, pattern in _MODALITY_PATTERNS:
        if pattern.search(text):
            return modality
    return "other"


def resolve_config_path(root: Path, value: str, *, what: str) -> Path:
    """A path from a source config: absolute as given, else relative to the workspace root; must exist."""
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = root / path
    if not path.exists():
        raise DataError(f"{what}: {path} does not exist")
    return path


def load_json_manifest(path: Path) -> list[Any]:
    """Parse a JSON list (or ``.jsonl``) manifest; any parse problem is a DataError naming file and position."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc.strerror})") from None
    if path.suffix.lower() == ".jsonl":
        rows: list[Any] = []
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}: invalid JSON on line {lineno}, column {exc.colno}: {exc.msg}") from None
        return rows
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of records, found a {type(data).__name__}")
    return data


def missing_fields(row: object, required: tuple[str, ...]) -> list[str]:
    """Required keys absent, null or blank in ``row`` (all of them when ``row`` is not an object)."""
    if not isinstance(row, dict):
        return list(required)
    return [k for k in required if row.get(k) is None or (isinstance(row.get(k), str) and not row[k].strip())]


def wrong_types(row: object, text: tuple[str, ...], *, numbers: tuple[str, ...] = ()) -> str | None:
    """Why a manifest row's fields have the wrong JSON type, naming the first such field, or None.

    ``text`` fields must be strings; ``numbers`` fields may also be JSON numbers (VQA-RAD publishes five counts
    as integers: ``"answer": 2``). A boolean, object or list is never stringified into a question or an answer
    (``{'x': 1}`` would train as text). Absent fields are :func:`missing_fields`' business."""
    if not isinstance(row, dict):
        return None
    for name in text:
        value = row.get(name)
        if value is None or isinstance(value, str):
            continue
        if name in numbers and isinstance(value, int | float) and not isinstance(value, bool):
            continue
        kind = {bool: "a boolean", dict: "an object", list: "a list", int: "a number", float: "a number"}.get(
            type(value), type(value).__name__
        )
        return f"field {name!r} is {kind} ({json.dumps(value)[:40]}), not text"
    return None


def comprehension_features(modality: str, body_part: str, site: str | None) -> dict[str, str]:
    """The ``features`` of a comprehension record (FLix and federated partitioning); ``site`` only when set."""
    features = {"task": "comprehension", "modality": modality, "body_part": body_part}
    if site:
        features["site"] = site
    return features
