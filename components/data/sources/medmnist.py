"""MedMNIST v2 ``.npz`` files (Yang et al., Scientific Data 2023) as a source; labels phrased as closed questions.

Format read: one ``.npz`` with ``train_images``/``train_labels``, ``val_images``/``val_labels``,
``test_images``/``test_labels`` (images uint8, N x H x W grey or N x H x W x 3; labels N or N x 1 class indices).
It is opened with ``np.load(..., allow_pickle=False)``: an archive holding pickled objects is refused, never
unpickled. Multi-label files (ChestMNIST's N x 14) are refused with a DataError: one closed question per image
needs one class per image.

One closed sample per image: the configured ``question`` and the answer ``answers[label]`` (BreastMNIST: "Is this
breast ultrasound image malignant?" -> yes for label 0 = malignant, no for label 1 = normal or benign). The pixels
travel as arrays (the builder normalises and hashes them). uid ``<split>-<index>``; group is the same per-image id,
since MedMNIST publishes no patient ids. The official split is kept by default (``use_official_split: true``).

BreastMNIST (``../shared/data/breastmnist``): 780 images, train 546 / val 78 / test 156; label 0 (malignant)
147/21/42. One image is byte-identical in train (index 115, malignant) and test (index 76, normal/benign): the
published split leaks it with contradicting labels. The reader keeps both as published (780 samples, each its own
group); the builder's exact-duplicate merge and the build report are where it shows.

Bad input: a missing or unreadable file, no ``<split>_images`` key, an images/labels length mismatch, non-uint8
images or pickled content -> DataError naming the file and key; a label with no entry in ``answers`` ->
Quarantined naming the file, split and index.

Configure (BreastMNIST defaults shown; only ``path`` is required)::

    sources:
      breastmnist:
        kind: medmnist
        path: /work/shared/data/breastmnist/breastmnist.npz
        question: Is this breast ultrasound image malignant?
        answers: {0: "yes", 1: "no"}
        label_names: {0: malignant, 1: normal or benign}
        modality: ultrasound
        body_part: breast
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from components.data.sources.base import (
    DataError,
    Quarantined,
    SourceContext,
    SourceImage,
    SourceSample,
    register_source,
)
from components.data.sources.manifest import comprehension_features, normalise_modality, resolve_config_path

SPLITS = ("train", "val", "test")


class MedmnistSourceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["medmnist"] = Field("medmnist", description="A MedMNIST .npz file; labels become closed questions.")
    path: str = Field(description="The .npz file; relative to the workspace root or absolute.")
    question: str = Field(
        "Is this breast ultrasound image malignant?", description="The closed question asked of every image."
    )
    answers: dict[int, str] = Field(
        default_factory=lambda: {0: "yes", 1: "no"}, description="Answer text for each label value."
    )
    label_names: dict[int, str] = Field(
        default_factory=lambda: {0: "malignant", 1: "normal or benign"},
        description="Name of each label value (kept in the record's meta).",
    )
    modality: str = Field("ultrasound", description="Modality of the images (mapped onto the allowed set).")
    body_part: str = Field("breast", description="Body part shown, lower case.")
    use_official_split: bool = Field(True, description="Keep the file's train/val/test split.")
    license: str = Field("CC-BY-4.0", description="Licence of the data (SPDX id).")
    site: str | None = Field(None, description="Site name added to the features for federated partitioning.")


@register_source("medmnist", MedmnistSourceConfig)
def read_medmnist(cfg: MedmnistSourceConfig, ctx: SourceContext) -> Iterator[SourceSample | Quarantined]:
    """Yield one closed-question sample per image of every split in the file (see the module docstring)."""
    path = resolve_config_path(ctx.root, cfg.path, what=f"source {ctx.name!r} path")
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: not a readable .npz file ({exc})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DataError(f"{path}: a single array, not a MedMNIST .npz archive")
    modality = normalise_modality(cfg.modality)
    body_part = cfg.body_part.strip().lower() or "unknown"
    features = comprehension_features(modality, body_part, cfg.site)
    with archive:
        present = [s for s in SPLITS if f"{s}_images" in archive.files]
        if not present:
            raise DataError(f"{path}: no train_images/val_images/test_images arrays (keys: {archive.files})")
        total = 0
        for split in present:
            images, labels = _load_split(archive, split, path.name)
            total += len(images)
            for index in range(len(images)):
                label = int(labels[index])
                uid = f"{split}-{index:05d}"
                if label not in cfg.answers:
                    yield Quarantined(
                        f"{path.name}:{uid}", f"{path.name} {split}[{index}]: label {label} has no entry in 'answers'"
                    )
                    continue
                yield SourceSample(
                    uid=uid,
                    image=SourceImage(key=f"{path.name}:{uid}", pixels=np.ascontiguousarray(images[index])),
                    modality=modality,
                    body_part=body_part,
                    task="comprehension",
                    kind="vqa_closed",
                    question=cfg.question,
                    answer=cfg.answers[label],
                    group=uid,
                    license=cfg.license,
                    split=split if cfg.use_official_split else None,
                    features=dict(features),
                    meta={
                        "label": label,
                        "label_name": cfg.label_names.get(label, str(label)),
                        "official_split": split,
                        "index": index,
                    },
                )
        if total == 0:
            raise DataError(f"{path}: the image arrays are empty (empty source {ctx.name!r})")


def _load_split(archive: np.lib.npyio.NpzFile, split: str, name: str) -> tuple[np.ndarray, np.ndarray]:
    """The split's images and labels, each read once, checked for shape and type."""
    try:
        images = archive[f"{split}_images"]
        labels = archive[f"{split}_labels"] if f"{split}_labels" in archive.files else None
    except ValueError as exc:  # object arrays need pickle, which is refused
        raise DataError(f"{name}: {split} arrays cannot be read without unpickling ({exc})") from None
    if labels is None:
        raise DataError(f"{name}: has {split}_images but no {split}_labels")
    if images.dtype != np.uint8 or images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] != 3):
        raise DataError(f"{name}: {split}_images must be uint8 N x H x W (x 3), got {images.dtype} {images.shape}")
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise DataError(
            f"{name}: {split}_labels has shape {labels.shape}; multi-label files are not supported (one class each)"
        )
    if len(labels) != len(images):
        raise DataError(f"{name}: {len(images)} {split}_images but {len(labels)} {split}_labels")
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{name}: {split}_labels must be integers, got {labels.dtype}")
    return images, labels
