"""The VL-Health record contract (DESIGN.md, "Data contract").

One JSON object per line in ``records.jsonl`` under the dataset root. This module is the single place that
names the allowed values, so the builder, the validation suite and the trainers agree.

Run nothing here; import it::

    from components.data.records import MODALITIES, Record
"""

from __future__ import annotations

from typing import Any, Literal

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


class Turn(BaseModel):
    """One conversation turn, LLaVA style."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    from_: Literal["human", "gpt"] = Field(alias="from", description="Who speaks: the user or the model.")
    value: str = Field(description="The text; the first human turn starts with '<image>\\n'.")


class Record(BaseModel):
    """One VL-Health sample. Paths are relative to the dataset root (POSIX separators)."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(description="Unique, stable id: '<source>/<uid>'.")
    source: str = Field(description="Name of the source entry in the config that produced the record.")
    license: str = Field(description="Licence of the source data (SPDX id where one exists).")
    image: str = Field(description="Input image path, relative to the dataset root.")
    image_sha256: str = Field(description="SHA-256 of the stored input image file.")
    modality: Modality = Field(description="Imaging modality of the input image.")
    body_part: str = Field(description="Body part shown, lower case ('unknown' when the source does not say).")
    task: Task = Field(description="comprehension (answer in text) or generation (answer is an image).")
    kind: Kind = Field(description="Finer task type.")
    conversations: list[Turn] = Field(description="Human question then model answer.")
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
