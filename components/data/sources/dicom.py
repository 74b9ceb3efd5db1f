"""(placeholder; the data helper replaces this file)"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from components.data.sources.base import Quarantined, SourceContext, SourceSample, register_source


class DicomSourceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["dicom"] = Field("dicom", description="A folder of DICOM files.")
    path: str = Field(description="Folder, relative to the workspace root.")


@register_source("dicom", DicomSourceConfig)
def read_dicom(cfg: DicomSourceConfig, ctx: SourceContext) -> Iterator[SourceSample | Quarantined]:
    raise NotImplementedError
