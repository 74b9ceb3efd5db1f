"""Fixtures for the data-stage tests: a workspace holding the embedded DICOM samples, and the in-memory
'test_list' source kind registered for one test."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import pytest

from components.data.intake import ingest
from components.data.samples import materialize_embedded
from components.data.sources.base import SOURCES, Quarantined, SourceContext, SourceSample, SourceSpec
from components.data.sources.dicom import DicomSourceConfig
from tests.unit.data.helpers import FACTORIES, KEY, ListSourceConfig, read_list


@pytest.fixture(scope="session")
def embedded_ws(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workspace whose data/raw/dicom holds the embedded samples, placed in the intake area and de-identified
    into the raw tree as `medtune run` does on a fresh workspace."""
    ws = tmp_path_factory.mktemp("ws")
    materialize_embedded(ws / "data" / "intake")
    ingest(
        {"dicom": DicomSourceConfig(path="data/raw/dicom")},
        workspace=ws,
        raw="data/raw",
        intake="data/intake",
        key=KEY,
        secrets=ws / ".medtune" / "secrets",
        stamps=ws / ".medtune" / "intake",
    )
    return ws


@pytest.fixture
def list_source(monkeypatch: pytest.MonkeyPatch) -> Callable[..., ListSourceConfig]:
    """Register the 'test_list' kind for one test; call it with a name and a factory to get a config."""
    monkeypatch.setitem(SOURCES, "test_list", SourceSpec("test_list", ListSourceConfig, read_list))

    def make(name: str, factory: Callable[[SourceContext], Iterable[SourceSample | Quarantined]]) -> ListSourceConfig:
        FACTORIES[name] = factory
        return ListSourceConfig(factory=name)

    return make
