"""The VL-Health record contract (DESIGN.md, "Data contract").

One JSON object per line in ``records.jsonl`` under the dataset root. This module is the single place that
names the allowed values, so the builder, the validation suite and the trainers agree.

A record carries zero, one or several input images (issue 16): ``image`` is one path (a string), a list of two
or more paths, or null for a text-only record; ``image_sha256`` has the same shape. The ``<image>`` tokens in
the human turns mark where the images go, in order, one token per image; gpt turns hold none. One image keeps
the LLaVA layout: the first human turn starts with ``<image>\\n`` (the build writes a single image as a string,
never as a list of one, so a dataset of single-image records reads exactly as before). Read the images of any
record, a :class:`Record` or a ``records.jsonl`` row alike, through :func:`record_images` and
:func:`record_image_shas`::

    from components.data.records import MODALITIES, Record, record_images
    for path in record_images(row):   # [] for a text-only record
        ...
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

MODALITIES = ("CT", "MRI", "X-ray", "ultrasound", "pathology", "other")
TASKS = ("comprehension", "generation")
KINDS = ("vqa_closed", "vqa_open", "caption", "modality_conversion", "super_resolution", "text_to_image")
GENERATION_KINDS = ("modality_conversion", "super_resolution", "text_to_image")
SPLITS = ("train", "val", "test")
IMAGE_TOKEN = "<image>"
RECORDS_FILE = "records.jsonl"
REPORT_FILE = "build_report.json"

Modality = Literal["CT", "MRI", "X-ray", "ultrasound", "pathology", "other"]
Task = Literal["comprehension", "generation"]
Kind = Literal["vqa_closed", "vqa_open", "caption", "modality_conversion", "super_resolution", "text_to_image"]
Split = Literal["train", "val", "test"]
#: Several images: a list of two or more (one image is a plain string, so each record has one spelling).
ImageList = Annotated[list[str], Field(min_length=2)]


class Turn(BaseModel):
    """One conversation turn, LLaVA style."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    from_: Literal["human", "gpt"] = Field(alias="from", description="Who speaks: the user or the model.")
    value: str = Field(
        description="The text. In human turns each '<image>' marks where the next image goes (with one image the "
        "first human turn starts with '<image>\\n'); gpt turns hold no '<image>'."
    )


class Record(BaseModel):
    """One VL-Health sample. Paths are relative to the dataset root (POSIX separators)."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(description="Unique, stable id: '<source>/<uid>'.")
    source: str = Field(description="Name of the source entry in the config that produced the record.")
    license: str = Field(description="Licence of the source data (SPDX id where one exists).")
    image: str | ImageList | None = Field(
        default=None,
        description="Input image path relative to the dataset root; a list of two or more paths for several images "
        "(in the order of the '<image>' tokens); null or absent for a text-only record.",
    )
    image_sha256: str | ImageList | None = Field(
        default=None,
        description="SHA-256 of each stored input image file, in the shape of 'image' (a string, a list of the same "
        "length and order, or null).",
    )
    modality: Modality = Field(
        description="Imaging modality of the input image(s); 'other' for a text-only record (no image)."
    )
    body_part: str = Field(description="Body part shown, lower case ('unknown' when the source does not say).")
    task: Task = Field(description="comprehension (answer in text) or generation (answer is an image).")
    kind: Kind = Field(description="Finer task type.")
    conversations: list[Turn] = Field(
        description="Human question then model answer; one '<image>' per input image in the human turns."
    )
    target_image: str | None = Field(default=None, description="Target image path for generation records.")
    target_image_sha256: str | None = Field(default=None, description="SHA-256 of the target image file.")
    group: str = Field(description="Patient or source-image id; no group spans two splits.")
    split: Split = Field(description="train, val or test.")
    features: dict[str, str] = Field(
        default_factory=dict,
        description="Feature values for FLix and federated partitioning (task, modality, site ...).",
    )
    meta: dict[str, Any] = Field(default_factory=dict, description="Source-specific extras (question type, organ ...).")

    @property
    def question(self) -> str:
        return self.conversations[0].value

    @property
    def answer(self) -> str:
        return self.conversations[1].value if len(self.conversations) > 1 else ""

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)


def _image_field(record: Mapping[str, Any] | Record, field: str) -> list[str]:
    value = getattr(record, field) if isinstance(record, Record) else record.get(field)
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    rid = record.id if isinstance(record, Record) else record.get("id")
    raise TypeError(f"record {rid!r}: field {field!r} must be a path string, a list of them or null, got {value!r}")


def record_images(record: Mapping[str, Any] | Record) -> list[str]:
    """The record's input image paths in token order: ``[]`` (text-only), ``[path]`` or ``[path, path, ...]``.

    Takes a :class:`Record` or a plain ``records.jsonl`` row (a dict); a value of another type is a TypeError
    naming the record id and the field."""
    return _image_field(record, "image")


def record_image_shas(record: Mapping[str, Any] | Record) -> list[str]:
    """The SHA-256 of each input image, in the order of :func:`record_images` (same rules)."""
    return _image_field(record, "image_sha256")
