"""Finding a checkpoint (issue 16): local folders, hub ids already in the local Hugging Face cache (nothing is ever
downloaded), and the one-line errors for everything else."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from components.models.hf import CheckpointError, check_checkpoint, resolve_checkpoint, supported
from tests.fixtures.tiny_vlms import build_tiny


def _cache(hub: Path, repo: str, source: Path) -> Path:
    """The layout huggingface_hub writes: models--org--name/{refs/main, snapshots/<sha>/files}."""
    root = hub / f"models--{repo.replace('/', '--')}"
    sha = "0123456789abcdef0123456789abcdef01234567"
    snapshot = root / "snapshots" / sha
    snapshot.mkdir(parents=True)
    for f in source.iterdir():
        (snapshot / f.name).write_bytes(f.read_bytes())
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(sha)
    return snapshot


def test_a_cached_hub_id_resolves_to_its_snapshot_and_an_uncached_one_says_how_to_download(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(hub))
    snapshot = _cache(hub, "acme/tiny-llava", build_tiny("llava", tmp_path / "src"))
    assert resolve_checkpoint("acme/tiny-llava") == snapshot
    assert check_checkpoint(snapshot) == "llava"
    expected = (
        r"model.path: 'acme/other' is neither a local folder nor in the local Hugging Face cache; medtune never "
        r"downloads weights: run `hf download acme/other"
    )
    with pytest.raises(CheckpointError, match=expected):
        resolve_checkpoint("acme/other")


def test_folders_that_are_no_usable_vlm_fail_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="model.path: '/no/such/folder' is not a folder"):
        resolve_checkpoint("/no/such/folder")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="holds no config.json"):
        check_checkpoint(tmp_path / "empty")
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(CheckpointError, match=r"is a 'bert' model, not a supported VLM family; supported: ") as e:
        check_checkpoint(bert)
    for name in ("llava", "qwen2_5_vl", "gemma3", "idefics3", "smolvlm"):
        assert name in str(e.value) and name in supported()
    weightless = tmp_path / "weightless"
    weightless.mkdir()
    (weightless / "config.json").write_text(json.dumps({"model_type": "llava"}))
    with pytest.raises(CheckpointError, match="holds no \\*.safetensors weights"):
        check_checkpoint(weightless)
