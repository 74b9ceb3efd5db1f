"""SLAKE (Liu et al., ISBI 2021) in its published layout, one language subset (English by default).

Format read: a folder holding ``train.json``, ``validate.json``, ``test.json`` and ``imgs/``. Each JSON is a list
of rows::

    {"img_id": 102, "img_name": "xmlab102/source.jpg", "question": "What modality is used to take this image?",
     "answer": "CT", "q_lang": "en", "location": "Lung", "modality": "CT", "answer_type": "OPEN",
     "base_type": "vqa", "content_type": "Modality", "triple": ["vhead", "_", "_"], "qid": 11934}

Rows whose ``q_lang`` is not the configured language are skipped (not quarantined). One sample per row: uid
``q<qid>``, kind from ``answer_type`` (CLOSED/OPEN), modality from ``modality`` ("X-Ray" -> X-ray), body part from
``location`` ("Chest_lung" -> chest, "Brain_Tissue" -> head, "Pelvic Cavity" -> pelvis), group = the image folder
(``xmlab102``: one folder per image, and SLAKE's images are one per patient scan). The official split is the file
a row comes from (train / validate -> val / test) and is kept by default: SLAKE splits by image. If an image
occurs in two files the reader refuses the source (DataError) while ``use_official_split`` is true, because the
builder could not keep that group in one split.

Bad input: unparsable JSON -> DataError naming the file, line and column; a listed file missing or no rows in the
language at all -> DataError; a row missing a required field, an unknown answer type, a missing image, a path that
escapes ``imgs/`` (``..``, absolute, symlink out) or a repeated qid (the first row keeps it) -> Quarantined naming
the file, row index and qid. Path escapes are quarantined so the build's ``on_error`` policy decides.

Configure::

    sources:
      slake:
        kind: slake
        path: data/raw/Slake1.0          # relative to the workspace root, or absolute
        language: en
"""

from __future__ import annotations

import posixpath
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from components.data.sources.base import (
    DataError,
    Quarantined,
    SourceContext,
    SourceImage,
    SourceSample,
    register_source,
    safe_path,
)
from components.data.sources.manifest import (
    comprehension_features,
    load_json_manifest,
    missing_fields,
    normalise_modality,
    resolve_config_path,
    wrong_types,
)

KINDS = {"CLOSED": "vqa_closed", "OPEN": "vqa_open"}
SPLIT_OF_FILE = {"train": "train", "validate": "val", "validation": "val", "val": "val", "test": "test"}
REQUIRED = ("qid", "img_name", "question", "answer", "answer_type", "q_lang")
_TEXT_FIELDS = ("img_name", "question", "answer", "answer_type", "q_lang", "location", "modality")
# SLAKE's locations, folded onto the coarse body parts the other sources use.
BODY_PARTS = {
    "abdomen": "abdomen",
    "lung": "chest",
    "chest": "chest",
    "chest_heart": "chest",
    "chest_lung": "chest",
    "chest_mediastinal": "chest",
    "head": "head",
    "brain": "head",
    "brain_tissue": "head",
    "brain_face": "head",
    "neck": "neck",
    "pelvic cavity": "pelvis",
}


class SlakeSourceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["slake"] = Field("slake", description="SLAKE: train/validate/test JSON and imgs/ folder.")
    path: str = Field(description="SLAKE folder (JSON files and imgs/); relative to the workspace root or absolute.")
    files: tuple[str, ...] = Field(
        ("train.json", "validate.json", "test.json"),
        description="JSON files to read inside 'path'; the file name (train/validate/test) is the official split.",
    )
    image_folder: str = Field("imgs", description="Folder inside 'path' that img_name is relative to.")
    language: str = Field("en", description="Keep rows whose q_lang is this ('en' or 'zh').")
    use_official_split: bool = Field(
        True, description="Keep SLAKE's split (by image); false lets the builder split by group."
    )
    license: str = Field("CC-BY-4.0", description="Licence of the data (SPDX id).")
    site: str | None = Field(None, description="Site name added to the features for federated partitioning.")


def _body_part(location: object) -> str:
    text = str(location or "").strip().lower()
    return BODY_PARTS.get(text, text.split("_")[0] or "unknown")


def _group(row: dict[str, Any]) -> str:
    """The image's folder (``xmlab102``); SLAKE keeps one image per folder."""
    folder = posixpath.dirname(posixpath.normpath(str(row["img_name"]).replace("\\", "/")))
    if folder not in ("", "."):
        return folder
    return f"img{row['img_id']}" if row.get("img_id") is not None else str(row["img_name"])


@register_source("slake", SlakeSourceConfig)
def read_slake(cfg: SlakeSourceConfig, ctx: SourceContext) -> Iterator[SourceSample | Quarantined]:
    """Yield one sample per row in the configured language (see the module docstring)."""
    root = resolve_config_path(ctx.root, cfg.path, what=f"source {ctx.name!r} path")
    folder = safe_path(root, cfg.image_folder, what=f"source {ctx.name!r} image_folder")
    if not folder.is_dir():
        raise DataError(f"{folder}: SLAKE image folder not found (set image_folder)")
    tables: list[tuple[Path, str | None, list[Any]]] = []
    for name in cfg.files:
        manifest = safe_path(root, name, what=f"source {ctx.name!r} files")
        if not manifest.is_file():
            raise DataError(f"{manifest}: SLAKE JSON not found (listed in 'files')")
        tables.append((manifest, SPLIT_OF_FILE.get(manifest.stem.lower()), load_json_manifest(manifest)))
    chosen = [
        (m, split, i, row)
        for m, split, rows in tables
        for i, row in enumerate(rows)
        if not isinstance(row, dict) or str(row.get("q_lang", "")).strip() in ("", cfg.language)
    ]
    if not chosen:
        names = ", ".join(m.name for m, _, _ in tables)
        raise DataError(f"{root}: no rows with q_lang {cfg.language!r} in {names} (empty source {ctx.name!r})")

    if cfg.use_official_split:
        splits_of: dict[str, set[str]] = defaultdict(set)
        for _, split, _, row in chosen:
            if split and not missing_fields(row, ("img_name",)):
                splits_of[_group(row)].add(split)
        if mixed := sorted(g for g, s in splits_of.items() if len(s) > 1):
            raise DataError(
                f"{root}: image(s) {', '.join(mixed[:5])} occur in more than one official split; "
                "set use_official_split: false to let the builder split by image"
            )

    seen: set[str] = set()
    for manifest, split, index, row in chosen:
        qid = str(row.get("qid", "")).strip() if isinstance(row, dict) else ""
        where = f"{manifest.name} row {index}" + (f" (qid {qid})" if qid else "")
        absent = missing_fields(row, REQUIRED)
        if absent:
            yield Quarantined(f"{manifest.name}#{index}", f"{where}: missing required field(s) {', '.join(absent)}")
            continue
        if typed := wrong_types(row, _TEXT_FIELDS, numbers=("answer",)):
            yield Quarantined(f"{manifest.name}#{index}", f"{where}: {typed}")
            continue
        answer_type = str(row["answer_type"]).strip().upper()
        if answer_type not in KINDS:
            yield Quarantined(f"q{qid}", f"{where}: answer_type {row['answer_type']!r} is neither CLOSED nor OPEN")
            continue
        if qid in seen:
            yield Quarantined(f"q{qid}", f"{where}: duplicate qid {qid!r} (the first row with it is kept)")
            continue
        seen.add(qid)
        image = str(row["img_name"])
        try:
            image_path = safe_path(folder, image, what=f"{where} img_name")
        except DataError as exc:
            yield Quarantined(f"q{qid}", f"refused: {exc}")
            continue
        if not image_path.is_file():
            yield Quarantined(f"q{qid}", f"{where}: image {image!r} not found in {folder}")
            continue
        modality = normalise_modality(row.get("modality"))
        body_part = _body_part(row.get("location"))
        features = comprehension_features(modality, body_part, cfg.site)
        yield SourceSample(
            uid=f"q{qid}",
            image=SourceImage(key=image, path=image_path),
            modality=modality,
            body_part=body_part,
            task="comprehension",
            kind=KINDS[answer_type],
            question=str(row["question"]).strip(),
            answer=str(row["answer"]).strip(),
            group=_group(row),
            license=cfg.license,
            split=split if cfg.use_official_split else None,
            features=features,
            meta={
                "qid": qid,
                "img_id": row.get("img_id"),
                "answer_type": answer_type,
                "content_type": str(row.get("content_type", "")),
                "base_type": str(row.get("base_type", "")),
                "location": str(row.get("location", "")),
                "official_split": split,
            },
        )
