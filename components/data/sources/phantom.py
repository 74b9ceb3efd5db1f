"""(placeholder; the data helper replaces this file)"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from components.data.sources.base import Quarantined, SourceContext, SourceSample, register_source


class PhantomSourceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["phantom"] = Field("phantom", description="The procedural phantom source.")
    subjects: int = Field(48, ge=1, description="Number of synthetic subjects (groups).")
    seed: int = Field(0, description="Seed; the same seed gives the same images and questions.")


@register_source("phantom", PhantomSourceConfig)
def read_phantom(cfg: PhantomSourceConfig, ctx: SourceContext) -> Iterator[SourceSample | Quarantined]:
    raise NotImplementedError
