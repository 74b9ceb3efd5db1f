"""Which folder a model URI names for `medtune export` (components/tracking/export.py): local folders in their three
shapes, and one-line errors for what is not a medtune model. The registry path (models:/, runs:/) runs end to end in
tests/integration/test_retrain_flow.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from components.tracking.export import ModelNotFound, local_path, model_folder


def _trained(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "trained.json").write_text("{}")
    return folder


@pytest.mark.parametrize("layout", ["", "artifacts/model", "model"])
def test_local_folders_resolve_to_the_trained_folder(layout: str, tmp_path: Path) -> None:
    inner = _trained(tmp_path / "m" / layout if layout else tmp_path / "m")
    assert model_folder(str(tmp_path / "m"), "sqlite:///unused.db", tmp_path) == inner


def test_what_is_not_a_model_fails_with_one_line(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFound, match="no such folder"):
        model_folder(str(tmp_path / "missing"), "sqlite:///unused.db", tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFound, match="holds no trained medtune model"):
        model_folder(str(tmp_path / "empty"), "sqlite:///unused.db", tmp_path)


def test_local_artifact_locations() -> None:
    assert local_path("file:///a/b%20c") == Path("/a/b c")
    assert local_path("/a/b") == Path("/a/b")
    assert local_path("s3://bucket/key") is None
