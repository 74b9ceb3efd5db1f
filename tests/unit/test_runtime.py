"""State folder, workspace discovery, telemetry switches, secret redaction."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from components.runtime import TELEMETRY_OFF, WorkspaceError, configure_environment, find_workspace, state_paths
from components.tracking import flatten_params, redact


def test_telemetry_off_but_explicit_setting_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key in TELEMETRY_OFF:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("DO_NOT_TRACK", "false")  # the user's explicit choice
    for key in ("PREFECT_HOME", "DVC_SITE_CACHE_DIR"):
        monkeypatch.delenv(key, raising=False)
    state = state_paths(tmp_path)
    configure_environment(state)
    assert os.environ["DO_NOT_TRACK"] == "false"
    assert os.environ["MLFLOW_DISABLE_TELEMETRY"] == "true"
    assert os.environ["DVC_NO_ANALYTICS"] == "1"
    assert os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
    assert os.environ["FLWR_TELEMETRY_ENABLED"] == "0"
    assert os.environ["PREFECT_HOME"] == str(tmp_path / ".medtune" / "prefect")
    assert os.environ["DVC_SITE_CACHE_DIR"] == str(tmp_path / ".medtune" / "dvc-site-cache")


def test_medtune_home_moves_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDTUNE_HOME", str(tmp_path / "elsewhere"))
    assert state_paths(tmp_path / "ws").root == (tmp_path / "elsewhere").resolve()


def test_state_make_creates_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MEDTUNE_HOME", raising=False)
    state = state_paths(tmp_path).make()
    assert state.mlflow_uri == f"sqlite:///{tmp_path.resolve()}/.medtune/mlflow/mlflow.db"
    assert state.mlflow_artifacts.is_dir() and state.dvc_remote.is_dir() and state.prefect_home.is_dir()


def test_workspace_found_from_a_subfolder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MEDTUNE_WORKSPACE", raising=False)
    (tmp_path / "configs").mkdir()
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "a" / "b").mkdir(parents=True)
    assert find_workspace(tmp_path / "a" / "b") == tmp_path.resolve()


def test_no_workspace_says_how_to_make_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MEDTUNE_WORKSPACE", raising=False)
    with pytest.raises(WorkspaceError, match="medtune init"):
        find_workspace(tmp_path)


def test_secrets_never_reach_params() -> None:
    flat = flatten_params({"s3": {"bucket": "b", "secret_access_key": "hunter2"}, "api_token": "t0k"})
    assert flat["s3.bucket"] == "b"
    assert flat["s3.secret_access_key"] == "***"
    assert flat["api_token"] == "***"
    assert "hunter2" not in str(flat) and "t0k" not in str(redact({"API_TOKEN": "t0k"}))


def test_metric_names_are_made_mlflow_legal() -> None:
    from components.tracking.runs import metric_name

    assert metric_name("closed/accuracy/source=phantom") == "closed/accuracy/source:phantom"
    assert metric_name("safety/vcr/u") == "safety/vcr/u"
    assert metric_name("a(b)?c") == "a_b__c"
