"""VQA-RAD (Lau et al., Scientific Data 2018) as published on OSF: ``VQA_RAD Dataset Public.json`` + image folder.

Format read: a JSON list of 2,248 rows with ``qid``, ``image_name``, ``image_organ`` (HEAD/CHEST/ABD),
``question``, ``answer``, ``answer_type`` (CLOSED/OPEN; two rows say ``"CLOSED "``), ``question_type`` (MODALITY,
PRES, POS ...), ``phrase_type`` (freeform/para; test_freeform/test_para form the official test set) and more.
One sample per row: uid ``q<qid>``, kind from ``answer_type``, body part from ``image_organ`` (abdomen, chest,
head), group = the image name, so the builder re-splits by image. The official split is kept only with
``use_official_split: true``; the default is false because 202 of the 203 official test images also occur in
train (the released split leaks images).

Counts: 2,248 QA rows over 314 distinct images. The folder holds 315 JPEGs: ``synpic35356.jpg`` is referenced by
no row (no two images are byte-identical), so the build has 314 images.

Modality: the JSON has no modality field, so it is derived per image, in this order:
  1. the dataset's own answers about that image (weight 2): open MODALITY answers ("CT with contrast", "MR - FLAIR",
     "PA Xray") and choice questions ("Is this a CT or an MRI?" -> MRI) name it; "Is this an MRI?" answered
     yes/no supports/counts against it (weight 2 / -3);
  2. weaker cues (weight 1): the question calls the image "this CT"/"the MRI"/"this film"; CT density wording
     (hypodense, attenuation) or MR signal wording (hyperintense, signal, T1/T2, FLAIR, DWI);
  3. the release Readme (section 4.1) describes the selection as "104 head axial CTs or MRIs, 107 chest x-rays,
     and 104 abdominal axial CTs", so chest -> X-ray and abdomen -> CT unless QA evidence clearly names another
     modality; a head image takes the best-supported of CT and MRI, or the other one when one is denied;
  4. a head image with no evidence either way stays ``other`` (40 of the 103 head images) -- no guessing.
``meta["modality_from"]`` says which rule decided (qa | readme | none).

Bad input: unparsable JSON -> DataError naming the file, line and column; an empty list -> DataError; a row
missing a required field, an unknown answer type, a missing image, a path that escapes the image folder
(``..``, absolute, a symlink out) or a repeated qid (the first row keeps it) -> Quarantined naming the file, row
index and qid. Path escapes are quarantined rather than raised so the build's ``on_error`` policy decides
(``fail`` stops the build; ``quarantine`` lists it in the build report).

Configure::

    sources:
      vqa_rad:
        kind: vqa_rad
        path: /work/shared/data/vqa_rad     # or relative to the workspace root, e.g. data/raw/vqa_rad
        use_official_split: false
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter, defaultdict
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
    resolve_config_path,
    wrong_types,
)

ORGANS = {"HEAD": "head", "CHEST": "chest", "ABD": "abdomen"}
KINDS = {"CLOSED": "vqa_closed", "OPEN": "vqa_open"}
# Release Readme, section 4.1: the modalities the images were selected from, per organ.
ORGAN_MODALITIES = {"HEAD": ("CT", "MRI"), "CHEST": ("X-ray",), "ABD": ("CT",)}
# Release Readme, section 5.0: test = test_freeform + test_para (451 rows), train = the rest.
OFFICIAL_SPLITS = {"freeform": "train", "para": "train", "test_freeform": "test", "test_para": "test"}
REQUIRED = ("qid", "image_name", "question", "answer", "answer_type")
_TEXT_FIELDS = ("image_name", "question", "answer", "answer_type", "question_type", "image_organ")

_TERMS = {
    "CT": re.compile(r"\b(?:ct|cta|computed tomography)\b", re.I),
    "MRI": re.compile(r"\b(?:mri?|t[12]|flair|dwi|adc|diffusion[- ]weighted)\b", re.I),
    "X-ray": re.compile(r"\b(?:x-?\s?rays?|xr|cxr|radiograph|plain film|film|kub)\b", re.I),
    "ultrasound": re.compile(r"\b(?:ultrasound|sonograph\w*)\b", re.I),
}
# What "Is this an MRI?" may be denied by: the modality itself, not a sequence ("Is this T1 weighted?" -> no
# still means MRI).
_DENIABLE = {
    "CT": re.compile(r"\b(?:ct|computed tomography)\b", re.I),
    "MRI": re.compile(r"\b(?:mri?|magnetic resonance)\b", re.I),
    "X-ray": re.compile(r"\b(?:x-?\s?rays?|cxr|radiograph|plain film|film)\b", re.I),
}
_NAMED = re.compile(r"\b(?:this|the above|the)\s+(\S+(?:\s+\S+)?)", re.I)  # "this CT", "the above MRI image"
_IS_THIS = re.compile(r"^\s*(?:is|was)\s+(?:this|the)\s+(?:image\s+)?(?:an?\s+)?", re.I)
_HYPOTHETICAL = re.compile(r"\b(?:not|can|could|might|safe)\b", re.I)
_CT_WORDS = re.compile(r"\b(?:hyper|hypo|iso)-?dens\w*|\battenuat\w*|\bhounsfield\b", re.I)
_MR_WORDS = re.compile(r"\b(?:hyper|hypo|iso)-?intens\w*|\bsignal\b|\bt[12][- ]weighted\b|\bflair\b", re.I)


class VqaRadSourceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["vqa_rad"] = Field("vqa_rad", description="VQA-RAD: the official JSON and its image folder.")
    path: str = Field(description="Folder holding the JSON and the images; relative to the workspace root or absolute.")
    json_name: str = Field("VQA_RAD Dataset Public.json", description="File name of the QA JSON inside 'path'.")
    image_folder: str | None = Field(
        None,
        description="Image folder inside 'path'; null means 'images' or, failing that, the release's "
        "'VQA_RAD Image Folder'.",
    )
    use_official_split: bool = Field(
        False, description="Keep the released train/test split (it shares 202 images); false re-splits by image."
    )
    license: str = Field("CC0-1.0", description="Licence of the data (SPDX id).")
    site: str | None = Field(None, description="Site name added to the features for federated partitioning.")


def _image_folder(root: Path, name: str | None) -> Path:
    candidates = [name] if name else ["images", "VQA_RAD Image Folder"]
    for candidate in candidates:
        folder = safe_path(root, candidate, what="vqa_rad image_folder")
        if folder.is_dir():
            return folder
    raise DataError(f"{root}: no image folder (looked for {', '.join(repr(c) for c in candidates)})")


def infer_modalities(rows: list[dict[str, Any]]) -> dict[str, tuple[str, str]]:
    """Modality per image name, and which rule decided it (see the module docstring)."""
    strong: dict[str, Counter[str]] = defaultdict(Counter)  # the dataset's answers about the image
    weak: dict[str, Counter[str]] = defaultdict(Counter)  # how questions and answers word things
    organ: dict[str, str] = {}
    for row in rows:
        image = str(row["image_name"])
        organ[image] = str(row.get("image_organ", "")).strip().upper()
        question, answer = str(row["question"]), str(row["answer"]).strip()
        if _HYPOTHETICAL.search(question):  # "What imaging does this not represent?", "Can CT show ...?"
            continue
        named = {m for m, p in _TERMS.items() if p.search(question)}
        deniable = {m for m, p in _DENIABLE.items() if p.search(question)}
        closed = str(row["answer_type"]).strip().upper() == "CLOSED"
        if _IS_THIS.match(question) and len(named) == 1 and answer.lower() in ("yes", "no"):
            (modality,) = named
            if answer.lower() == "yes":
                strong[image][modality] += 2
            elif modality in deniable:
                strong[image][modality] -= 3
        elif "MODALITY" in str(row.get("question_type", "")) and (not closed or len(named) > 1):
            for modality, pattern in _TERMS.items():
                if pattern.search(answer):
                    strong[image][modality] += 2
        for phrase in _NAMED.findall(question):
            for modality, pattern in _TERMS.items():
                if pattern.search(phrase):
                    weak[image][modality] += 1
        text = f"{question} {answer}"
        weak[image]["CT"] += bool(_CT_WORDS.search(text))
        weak[image]["MRI"] += bool(_MR_WORDS.search(text))
    result: dict[str, tuple[str, str]] = {}
    for image, org in organ.items():
        votes = Counter({m: strong[image][m] + weak[image][m] for m in _TERMS})
        candidates = ORGAN_MODALITIES.get(org, tuple(_TERMS))
        best = max(candidates, key=lambda m: votes[m])
        outsider = max(_TERMS, key=lambda m: strong[image][m])
        if outsider not in candidates and strong[image][outsider] >= 2 and votes[outsider] > votes[best]:
            result[image] = (outsider, "qa")  # the dataset's own answers contradict the organ's selection
        elif votes[best] > 0 and sum(votes[m] == votes[best] for m in candidates) == 1:
            result[image] = (best, "qa" if len(candidates) > 1 else "readme")
        elif len(candidates) == 1:
            result[image] = (candidates[0], "readme")
        elif len(kept := [m for m in candidates if strong[image][m] >= 0]) == 1:
            result[image] = (kept[0], "qa")  # e.g. a head image answered "Is this a CT?" -> no
        else:
            result[image] = ("other", "none")
    return result


@register_source("vqa_rad", VqaRadSourceConfig)
def read_vqa_rad(cfg: VqaRadSourceConfig, ctx: SourceContext) -> Iterator[SourceSample | Quarantined]:
    """Yield one sample per QA row of the VQA-RAD JSON (see the module docstring)."""
    root = resolve_config_path(ctx.root, cfg.path, what=f"source {ctx.name!r} path")
    manifest = safe_path(root, cfg.json_name, what=f"source {ctx.name!r} json_name")
    if not manifest.is_file():
        raise DataError(f"{manifest}: VQA-RAD JSON not found (set json_name)")
    folder = _image_folder(root, cfg.image_folder)
    rows = load_json_manifest(manifest)
    if not rows:
        raise DataError(f"{manifest}: no records (empty source {ctx.name!r})")

    good: list[tuple[int, dict[str, Any]]] = []
    seen: set[str] = set()
    for index, row in enumerate(rows):
        qid = str(row.get("qid", "")).strip() if isinstance(row, dict) else ""
        where = f"{manifest.name} row {index}" + (f" (qid {qid})" if qid else "")
        absent = missing_fields(row, REQUIRED)
        if absent:
            yield Quarantined(f"{manifest.name}#{index}", f"{where}: missing required field(s) {', '.join(absent)}")
        elif typed := wrong_types(row, _TEXT_FIELDS, numbers=("answer",)):
            yield Quarantined(f"{manifest.name}#{index}", f"{where}: {typed}")
        elif str(row["answer_type"]).strip().upper() not in KINDS:
            yield Quarantined(f"q{qid}", f"{where}: answer_type {row['answer_type']!r} is neither CLOSED nor OPEN")
        elif qid in seen:
            yield Quarantined(f"q{qid}", f"{where}: duplicate qid {qid!r} (the first row with it is kept)")
        else:
            seen.add(qid)
            good.append((index, row))

    modalities = infer_modalities([row for _, row in good])
    found: dict[str, Path] = {}  # image name -> checked path (2,248 rows share 314 images)
    for index, row in good:
        qid, image = str(row["qid"]).strip(), str(row["image_name"])
        where = f"{manifest.name} row {index} (qid {qid})"
        if image not in found:
            try:
                path = safe_path(folder, image, what=f"{where} image_name")
            except DataError as exc:
                yield Quarantined(f"q{qid}", f"refused: {exc}")
                continue
            if not path.is_file():
                yield Quarantined(f"q{qid}", f"{where}: image {image!r} not found in {folder}")
                continue
            found[image] = path
        resolved = found[image]
        organ = str(row.get("image_organ", "")).strip().upper()
        body_part = ORGANS.get(organ, organ.lower() or "unknown")
        modality, modality_from = modalities[image]
        phrase_type = str(row.get("phrase_type", "")).strip()
        official = OFFICIAL_SPLITS.get(phrase_type)
        if cfg.use_official_split and official is None:
            yield Quarantined(f"q{qid}", f"{where}: phrase_type {phrase_type!r} names no official split")
            continue
        features = comprehension_features(modality, body_part, cfg.site)
        yield SourceSample(
            uid=f"q{qid}",
            image=SourceImage(key=image, path=resolved),
            modality=modality,
            body_part=body_part,
            task="comprehension",
            kind=KINDS[str(row["answer_type"]).strip().upper()],
            question=str(row["question"]).strip(),
            answer=str(row["answer"]).strip(),
            group=image,
            license=cfg.license,
            split=official if cfg.use_official_split else None,
            features=features,
            meta={
                "qid": qid,
                "question_type": str(row.get("question_type", "")).strip(),
                "answer_type": str(row["answer_type"]).strip().upper(),
                "phrase_type": phrase_type,
                "image_organ": organ,
                "official_split": official,
                "modality_from": modality_from,
            },
        )


# -- the question-type task (benchmarks/rank_search.py, components/federated/text.py) --------------------------------
#: VQA-RAD's 11 question types, the classes of the text task "question -> its type".
QUESTION_TYPES = ("PRES", "POS", "ABN", "OTHER", "MODALITY", "SIZE", "PLANE", "ATTRIB", "ORGAN", "COLOR", "COUNT")
_TYPE_FIXES = {"ATRIB": "ATTRIB", "PRSE": "PRES"}  # misspellings in the release


def question_type(raw: str) -> str:
    """The class of a ``question_type`` field: a row listing several types takes the first; misspellings and case
    (``ATRIB``, ``PRSE``, ``Other``) are mended."""
    first = raw.split(",")[0].strip().upper()
    return _TYPE_FIXES.get(first, first)


def load_question_types(path: str | Path, test_share: float = 0.2) -> tuple[list[tuple[str, int]], ...]:
    """(train, test) rows of (question, index in :data:`QUESTION_TYPES`) from the release's JSON, split by image:
    an image's questions are all train or all test (SHA-256 of ``image_name``, ``test_share`` of images to test)."""
    train: list[tuple[str, int]] = []
    test: list[tuple[str, int]] = []
    for row in json.loads(Path(path).read_text(encoding="utf-8")):
        label = QUESTION_TYPES.index(question_type(row["question_type"]))
        bucket = int.from_bytes(hashlib.sha256(row["image_name"].encode()).digest()[:4], "little") / 2**32
        (test if bucket < test_share else train).append((str(row["question"]), label))
    return train, test
