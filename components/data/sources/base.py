"""What every source reader hands to the builder, and how readers are registered.

A source reader turns data *as published* (a folder of DICOM files, VQA-RAD's JSON, a MedMNIST ``.npz`` ...)
into :class:`SourceSample` objects. It does not write files, split, hash or de-duplicate: the builder
(:mod:`components.data.build`) does that for every source alike. A bad item is yielded as a
:class:`Quarantined` (the builder applies the configured policy); a source that cannot be read at all raises
:class:`DataError`.

Register a reader with its pydantic config model::

    @register_source("phantom", PhantomSourceConfig)
    def read_phantom(cfg: PhantomSourceConfig, ctx: SourceContext) -> Iterator[SourceSample | Quarantined]: ...
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel


class DataError(Exception):
    """A data problem a user must fix. The message names the file (and record) concerned."""


@dataclass
class SourceImage:
    """An image as a source hands it over: decoded pixels, or a file for the builder to decode.

    ``key`` names the image in messages and in the quarantine list (a path relative to the source root, or a
    generated name); it must not carry patient data.
    """

    key: str
    pixels: np.ndarray | None = None  # uint8, HxW or HxWx3
    path: Path | None = None  # already checked to lie inside the source root

    def __post_init__(self) -> None:
        if (self.pixels is None) == (self.path is None):
            raise ValueError(f"image {self.key!r}: give exactly one of pixels or path")


@dataclass
class SourceSample:
    """One question/answer (or generation pair) about zero, one or several images, before building.

    ``image`` is one :class:`SourceImage` (the question's ``<image>`` tokens, if any, are dropped and the builder
    puts one in front: the LLaVA single-image layout), a list of them (the question holds exactly one
    ``<image>`` per image, in image order, where each goes; a list of one is stored as a single image, its token
    moved to the front), or None for a text-only sample (no ``<image>`` in the question; modality ``other``).
    """

    uid: str  # unique and stable within the source; becomes the record id '<source>/<uid>'
    image: SourceImage | list[SourceImage] | None
    modality: str
    body_part: str
    task: str
    kind: str
    question: str  # one image: without the '<image>' token (the builder adds it); a list: one token per image
    answer: str  # text answer (comprehension) or a short description of the target (generation)
    group: str  # patient or source-image id, already pseudonymised where it came from PHI
    license: str
    target_image: SourceImage | None = None
    split: str | None = None  # an official split the source publishes, used when the config keeps it
    features: dict[str, str] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def images(self) -> list[SourceImage]:
        """The input images in order: [] for a text-only sample."""
        if self.image is None:
            return []
        return [self.image] if isinstance(self.image, SourceImage) else list(self.image)


@dataclass(frozen=True)
class Quarantined:
    """A sample the reader could not turn into a record, and why (file and record named in ``reason``)."""

    key: str
    reason: str


@dataclass(frozen=True)
class SourceContext:
    """What a reader may need besides its own config."""

    name: str  # the source's name in the config
    root: Path  # the workspace root: relative paths in a source config resolve against it
    deid_key: bytes  # key for pseudonyms (never logged)
    seed: int
    pseudonym_map: Path | None = None  # where path pseudonyms are mapped back (beside the key); None: not kept


Reader = Callable[[Any, SourceContext], Iterator[SourceSample | Quarantined]]


@dataclass(frozen=True)
class SourceSpec:
    kind: str
    config: type[BaseModel]
    reader: Reader


SOURCES: dict[str, SourceSpec] = {}


def register_source(kind: str, config: type[BaseModel]) -> Callable[[Reader], Reader]:
    def wrap(reader: Reader) -> Reader:
        if kind in SOURCES:
            raise ValueError(f"source kind {kind!r} registered twice")
        SOURCES[kind] = SourceSpec(kind, config, reader)
        return reader

    return wrap


def safe_path(root: Path, relative: str | Path, *, what: str) -> Path:
    """Resolve ``relative`` inside ``root``; refuse '..', absolute paths and symlinks that lead out.

    ``what`` names the manifest/record in the message.
    """
    rel = Path(relative)
    if rel.is_absolute():
        raise DataError(f"{what}: path {str(relative)!r} is absolute; paths must be relative to {root}")
    root_resolved = root.resolve()
    target = (root / rel).resolve()
    if not target.is_relative_to(root_resolved):
        raise DataError(f"{what}: path {str(relative)!r} escapes the source root {root}")
    return target
