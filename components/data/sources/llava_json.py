"""Generic LLaVA conversation JSON (LLaVA-Med, PubMedVision and the like) as a source.

Format read: a JSON list (or JSON lines, one object per line, when the file ends in ``.jsonl``) of::

    {"id": "...", "image": "rel/path.jpg" | ["rel/path.jpg"],
     "conversations": [{"from": "human", "value": "<image>\\nWhat is shown?"},
                       {"from": "gpt", "value": "A chest CT."}, ...],
     "modality": "Computed Tomography", "body_part": "Chest"}          # optional per-record fields

Each human/gpt pair becomes one sample (uid ``<id>-<pair index>``); the ``<image>`` token is taken out of the
question (the builder puts it back in front). ``modality``/``body_part`` come from the record when present
(mapped onto the allowed modalities: "Computed Tomography" -> CT, "X-Ray" -> X-ray ...; unknown -> other), else
from the config. ``group`` is the image path, unless the record carries one of ``group_fields`` (a patient or
study id): then its keyed pseudonym (:func:`components.data.deid.pseudonym`, the same ``pt-...`` a DICOM
source gives that patient id), never the raw id.

``record_kind`` sets the record kind: ``vqa_open`` by default (free-text answers are what these files hold);
``caption`` for captioning/alignment data; ``auto`` makes a pair whose answer is yes/no ``vqa_closed`` and the rest
``vqa_open``. A record with several images is quarantined (a VL-Health record has one image).

Bad input: unparsable JSON -> DataError naming file, line and column; no records -> DataError; a record missing
``id``/``image``/``conversations``, a missing image, a path that escapes the image folder (``..``, absolute, a
symlink out), a turn out of human/gpt order, or a repeated ``id`` (the first one wins) -> Quarantined naming the
file, record index and id. A path escape is quarantined (not raised) so the build's ``on_error`` policy decides;
with ``on_error: fail`` it stops the build.

Configure (paths relative to the workspace root, or absolute)::

    sources:
      pubmedvision:
        kind: llava_json
        path: /data/PubMedVision/PubMedVision_Alignment_VQA.json
        image_folder: /data/PubMedVision          # default: the JSON file's folder
        license: Apache-2.0
        record_kind: vqa_open

This module also holds the small manifest helpers the other JSON readers share (``resolve_config_path``,
``load_json_manifest``, ``missing_fields``, ``normalise_modality``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from components.data.deid import pseudonym
from components.data.records import IMAGE_TOKEN
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
)

_YES_NO = {"yes", "no", "yes.", "no."}
_SPEAKER = {"human": "human", "user": "human", "gpt": "gpt", "assistant": "gpt"}


class LlavaJsonSourceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["llava_json"] = Field("llava_json", description="LLaVA-style conversation JSON / JSON lines.")
    path: str = Field(description="The .json (list) or .jsonl file; relative to the workspace root or absolute.")
    image_folder: str | None = Field(
        None, description="Folder the records' image paths are relative to; null means the JSON file's folder."
    )
    license: str = Field(description="Licence of the data (SPDX id where one exists), e.g. Apache-2.0.")
    modality: str = Field("other", description="Modality for records without a 'modality' field.")
    body_part: str = Field("unknown", description="Body part for records without a 'body_part' field.")
    record_kind: Literal["vqa_open", "vqa_closed", "caption", "auto"] = Field(
        "vqa_open", description="Record kind; 'auto' makes yes/no answers vqa_closed and the rest vqa_open."
    )
    group_fields: tuple[str, ...] = Field(
        ("patient_id", "patient", "group"),
        description="Record fields naming a patient/group (first present wins, pseudonymised); else the image.",
    )
    site: str | None = Field(None, description="Site name added to the features for federated partitioning.")


def _strip_image_token(text: str) -> str:
    return text.replace(IMAGE_TOKEN, "").strip()


@register_source("llava_json", LlavaJsonSourceConfig)
def read_llava_json(cfg: LlavaJsonSourceConfig, ctx: SourceContext) -> Iterator[SourceSample | Quarantined]:
    """Yield one sample per human/gpt pair of every record (see the module docstring)."""
    manifest = resolve_config_path(ctx.root, cfg.path, what=f"source {ctx.name!r} path")
    folder = (
        manifest.parent
        if cfg.image_folder is None
        else resolve_config_path(ctx.root, cfg.image_folder, what=f"source {ctx.name!r} image_folder")
    )
    rows = load_json_manifest(manifest)
    if not rows:
        raise DataError(f"{manifest}: no records (empty source {ctx.name!r})")
    default_modality = normalise_modality(cfg.modality)
    seen: set[str] = set()
    for index, row in enumerate(rows):
        rid = str(row.get("id", "")) if isinstance(row, dict) else ""
        where = f"{manifest.name} record {index}" + (f" (id {rid})" if rid else "")
        key = f"{manifest.name}#{index}"
        absent = missing_fields(row, ("id", "image", "conversations"))
        if absent:
            yield Quarantined(key, f"{where}: missing required field(s) {', '.join(absent)}")
            continue
        if rid in seen:
            yield Quarantined(key, f"{where}: duplicate id {rid!r} (the first record with it is kept)")
            continue
        seen.add(rid)
        image = row["image"]
        if isinstance(image, list):
            if len(image) != 1:
                yield Quarantined(key, f"{where}: {len(image)} images; a record carries exactly one")
                continue
            image = image[0]
        if not isinstance(image, str):
            yield Quarantined(key, f"{where}: field 'image' must be a path string")
            continue
        try:
            image_path = safe_path(folder, image, what=where)
        except DataError as exc:
            yield Quarantined(key, f"refused: {exc}")
            continue
        if not image_path.is_file():
            yield Quarantined(key, f"{where}: image {image!r} not found in {folder}")
            continue
        turns = row["conversations"]
        if not isinstance(turns, list) or not turns:
            yield Quarantined(key, f"{where}: 'conversations' must be a non-empty list of turns")
            continue
        pairs, problem = _pairs(turns)
        if problem:
            yield Quarantined(key, f"{where}: {problem}")
            continue
        modality = normalise_modality(row["modality"]) if row.get("modality") else default_modality
        body_part = str(row.get("body_part") or cfg.body_part).strip().lower() or "unknown"
        group = image
        for name in cfg.group_fields:
            if row.get(name) not in (None, ""):
                group = pseudonym(ctx.deid_key, str(row[name]))
                break
        features = comprehension_features(modality, body_part, cfg.site)
        for turn_index, (question, answer) in enumerate(pairs):
            kind = cfg.record_kind
            if kind == "auto":
                kind = "vqa_closed" if answer.strip().lower() in _YES_NO else "vqa_open"
            yield SourceSample(
                uid=f"{rid}-{turn_index}",
                image=SourceImage(key=image, path=image_path),
                modality=modality,
                body_part=body_part,
                task="comprehension",
                kind=kind,
                question=question,
                answer=answer,
                group=group,
                license=cfg.license,
                features=dict(features),
                meta={"record_id": rid, "turn": turn_index},
            )


def _pairs(turns: list[Any]) -> tuple[list[tuple[str, str]], str | None]:
    """Split turns into (question, answer) pairs; the second value names the first problem found."""
    pairs: list[tuple[str, str]] = []
    if len(turns) % 2:
        return [], f"{len(turns)} turns; expected human/gpt pairs"
    for i in range(0, len(turns), 2):
        human, gpt = turns[i], turns[i + 1]
        if not (isinstance(human, dict) and isinstance(gpt, dict)):
            return [], f"turn {i} is not an object with 'from' and 'value'"
        if _SPEAKER.get(str(human.get("from"))) != "human" or _SPEAKER.get(str(gpt.get("from"))) != "gpt":
            return [], f"turns {i}-{i + 1} are not a human turn followed by a gpt turn"
        question = _strip_image_token(str(human.get("value") or ""))
        answer = str(gpt.get("value") or "").strip()
        if not question or not answer:
            return [], f"turns {i}-{i + 1}: empty question or answer"
        pairs.append((question, answer))
    return pairs, None
