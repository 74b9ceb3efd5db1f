"""Generic LLaVA conversation JSON (LLaVA-Med, PubMedVision and the like) as a source.

Format read: a JSON list (or JSON lines, one object per line, when the file ends in ``.jsonl``) of::

    {"id": "...", "image": "rel/path.jpg" | ["rel/a.jpg", "rel/b.jpg", ...] | absent,
     "conversations": [{"from": "human", "value": "<image>\\nWhat is shown?"},
                       {"from": "gpt", "value": "A chest CT."}, ...],
     "modality": "Computed Tomography", "body_part": "Chest"}          # optional per-record fields

``image`` as the LLaVA family publishes it: one path (LLaVA-1.5, LLaVA-Med), a list of paths (LLaVA-NeXT /
OneVision multi-image data; a list of one is one image), or no ``image`` key at all (null or ``[]`` alike) for a
text-only conversation (LLaVA-1.5's mix holds ShareGPT text; issue 16). The ``<image>`` tokens in the human turns
mark where the images go, in order:

- one image: zero or one token (LLaVA's convention: none means the image comes first); the token is taken out of
  the question and the builder puts it back in front, as LLaVA's own preprocessing does;
- several images: exactly one token per image, anywhere in the human turns; they stay where they are;
- no image: no token; the sample's modality is ``other``.

Each human/gpt pair becomes one sample (uid ``<id>-<pair index>``). With one image every pair carries it; with
several, a pair carries the images shown up to and including its own turn (the tokens of earlier turns are put in
front of its question, in order), so a pair before the first token is text-only. ``modality``/``body_part`` come
from the record when present (mapped onto the allowed modalities: "Computed Tomography" -> CT, "X-Ray" -> X-ray
...; unknown -> other), else from the config. ``group`` is the (first) image path, or the record id for a
text-only record, unless the record carries one of ``group_fields`` (a patient or study id): then its keyed
pseudonym (:func:`components.data.deid.pseudonym`, the same ``pt-...`` a DICOM source gives that patient id),
never the raw id.

``record_kind`` sets the record kind: ``vqa_open`` by default (free-text answers are what these files hold);
``caption`` for captioning/alignment data; ``auto`` makes a pair whose answer is yes/no ``vqa_closed`` and the rest
``vqa_open``.

Bad input: unparsable JSON -> DataError naming file, line and column; no records -> DataError; a record missing
``id``/``conversations``, an ``image`` that is neither a path, a list of paths nor absent, a missing image (each
path of a list is checked, the message names ``image[i]``), a path that escapes the image folder (``..``,
absolute, a symlink out), a token count that does not fit the images, ``<image>`` in a gpt turn, a turn out of
human/gpt order, or a repeated ``id`` (the first one wins) -> Quarantined naming the file, record index, id and
field. A path escape is quarantined (not raised) so the build's ``on_error`` policy decides; with
``on_error: fail`` it stops the build.

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
from pathlib import Path
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
    wrong_types,
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


def _image_paths(value: Any) -> list[str] | None:
    """The record's image paths ([] for none), or None when ``image`` has a shape LLaVA files never use."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value.strip() else None
    if isinstance(value, list) and all(isinstance(v, str) and v.strip() for v in value):
        return list(value)
    return None


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
        absent = missing_fields(row, ("id", "conversations"))
        if absent:
            yield Quarantined(key, f"{where}: missing required field(s) {', '.join(absent)}")
            continue
        if rid in seen:
            yield Quarantined(key, f"{where}: duplicate id {rid!r} (the first record with it is kept)")
            continue
        seen.add(rid)
        if typed := wrong_types(row, ("modality", "body_part")):
            yield Quarantined(key, f"{where}: {typed}")
            continue
        paths = _image_paths(row.get("image"))
        if paths is None:
            yield Quarantined(key, f"{where}: field 'image' must be a path, a list of paths, or absent (text-only)")
            continue
        images, problem = _resolve_images(folder, paths, where)
        if problem:
            yield Quarantined(key, problem)
            continue
        turns = row["conversations"]
        if not isinstance(turns, list) or not turns:
            yield Quarantined(key, f"{where}: 'conversations' must be a non-empty list of turns")
            continue
        pairs, problem = _pairs(turns)
        if not problem:
            problem = _token_problem(pairs, len(images))
        if problem:
            yield Quarantined(key, f"{where}: {problem}")
            continue
        modality = normalise_modality(row["modality"]) if row.get("modality") else default_modality
        body_part = str(row.get("body_part") or cfg.body_part).strip().lower() or "unknown"
        group = paths[0] if paths else f"text/{rid}"
        for name in cfg.group_fields:
            if row.get(name) not in (None, ""):
                group = pseudonym(ctx.deid_key, str(row[name]))
                break
        shown = 0  # images whose token lies in an earlier human turn (several images)
        for turn_index, (question, answer) in enumerate(pairs):
            kind = cfg.record_kind
            if kind == "auto":
                kind = "vqa_closed" if answer.strip().lower() in _YES_NO else "vqa_open"
            image: SourceImage | list[SourceImage] | None
            if len(images) <= 1:
                image, question = (images[0] if images else None), _strip_image_token(question)
            else:
                own = question.count(IMAGE_TOKEN)
                image = images[: shown + own] or None
                question, shown = f"{IMAGE_TOKEN}\n" * shown + question, shown + own
            sample_modality = modality if image is not None else "other"
            yield SourceSample(
                uid=f"{rid}-{turn_index}",
                image=image,
                modality=sample_modality,
                body_part=body_part,
                task="comprehension",
                kind=kind,
                question=question,
                answer=answer,
                group=group,
                license=cfg.license,
                features=comprehension_features(sample_modality, body_part, cfg.site),
                meta={"record_id": rid, "turn": turn_index},
            )


def _resolve_images(folder: Path, paths: list[str], where: str) -> tuple[list[SourceImage], str | None]:
    """The record's images as SourceImages, or the reason the first bad one is refused (naming ``image[i]``)."""
    out = []
    for i, rel in enumerate(paths):
        field = "image" if len(paths) == 1 else f"image[{i}]"
        try:
            path = safe_path(folder, rel, what=where if len(paths) == 1 else f"{where} field {field}")
        except DataError as exc:
            return [], f"refused: {exc}"
        if not path.is_file():
            named = f"image {rel!r}" if len(paths) == 1 else f"field {field}: image {rel!r}"
            return [], f"{where}: {named} not found in {folder}"
        out.append(SourceImage(key=rel, path=path))
    return out, None


def _token_problem(pairs: list[tuple[str, str]], images: int) -> str | None:
    """Why the ``<image>`` tokens of the human turns do not fit ``images`` images (module docstring), or None."""
    count = sum(question.count(IMAGE_TOKEN) for question, _ in pairs)
    if images == 0 and count:
        return f"{count} '{IMAGE_TOKEN}' token(s) in the human turns but no field 'image' (a text-only record)"
    if images == 1 and count > 1:
        return f"{count} '{IMAGE_TOKEN}' tokens in the human turns for the 1 image in field 'image'"
    if images > 1 and count != images:
        return f"{count} '{IMAGE_TOKEN}' token(s) in the human turns for the {images} images in field 'image'"
    return None


def _pairs(turns: list[Any]) -> tuple[list[tuple[str, str]], str | None]:
    """Split turns into (question, answer) pairs, questions with their ``<image>`` tokens; the second value
    names the first problem found."""
    pairs: list[tuple[str, str]] = []
    if len(turns) % 2:
        return [], f"{len(turns)} turns; expected human/gpt pairs"
    for i in range(0, len(turns), 2):
        human, gpt = turns[i], turns[i + 1]
        if not (isinstance(human, dict) and isinstance(gpt, dict)):
            return [], f"turn {i} is not an object with 'from' and 'value'"
        if _SPEAKER.get(str(human.get("from"))) != "human" or _SPEAKER.get(str(gpt.get("from"))) != "gpt":
            return [], f"turns {i}-{i + 1} are not a human turn followed by a gpt turn"
        for turn, n in ((human, i), (gpt, i + 1)):
            if (typed := wrong_types(turn, ("value",))) is not None:
                return [], f"turn {n}: {typed}"
        question = str(human.get("value") or "").strip()
        answer = str(gpt.get("value") or "").strip()
        if not _strip_image_token(question) or not answer:
            return [], f"turns {i}-{i + 1}: empty question or answer"
        if IMAGE_TOKEN in answer:
            return [], f"turn {i + 1} (gpt) holds '{IMAGE_TOKEN}'; only human turns mark images"
        pairs.append((question, answer))
    return pairs, None
