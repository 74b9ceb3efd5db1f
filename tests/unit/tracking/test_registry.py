"""Registry helpers on a real SQLite MLflow store: aliases (including "none"), finding a retrain run's version,
evidence round trip, the tags a version carries."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from components.tracking import registry
from components.tracking.promotion import Evidence, SafetyEvidence


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One store for the module (creating MLflow's tables costs ~1.5 s); each test uses its own model name."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{tmp_path_factory.mktemp('registry') / 'mlflow.db'}")


def _version(client: Any, tmp_path: Path, name: str, parent: str) -> tuple[str, str]:
    experiment = client.get_experiment_by_name(name) or client.get_experiment(
        client.create_experiment(name, artifact_location=(tmp_path / "a").as_uri())
    )
    run_id = client.create_run(experiment.experiment_id).info.run_id
    if not client.search_registered_models(f"name = '{name}'"):
        client.create_registered_model(name)
    mv = client.create_model_version(name, (tmp_path / "a" / run_id).as_uri(), run_id=run_id,
                                     tags={"medtune.parent_run": parent})  # fmt: skip
    return str(mv.version), run_id


def test_aliases_set_read_and_removed(client: Any, tmp_path: Path) -> None:
    assert registry.alias_version(client, "absent-model", registry.CHAMPION) is None
    _version(client, tmp_path, "aliases", "p1")
    _version(client, tmp_path, "aliases", "p2")
    assert registry.alias_version(client, "aliases", registry.CHAMPION) is None
    registry.set_alias(client, "aliases", registry.CHAMPION, "2")
    assert registry.alias_version(client, "aliases", registry.CHAMPION) == "2"
    registry.set_alias(client, "aliases", registry.CHAMPION, None)
    registry.set_alias(client, "aliases", registry.CHAMPION, None)  # removing an absent alias is a no-op
    assert registry.alias_version(client, "aliases", registry.CHAMPION) is None


def test_find_version_of_a_retrain_run(client: Any, tmp_path: Path) -> None:
    _version(client, tmp_path, "m", "p1")
    _, run_2 = _version(client, tmp_path, "m", "p2")
    _version(client, tmp_path, "m", "p2")  # the same run registered twice: the newest wins
    assert registry.find_version(client, "m", parent_run="p1") == "1"
    assert registry.find_version(client, "m", parent_run="p2") == "3"
    assert registry.find_version(client, "m", parent_run=run_2) == "2"  # the version's own run also names it
    with pytest.raises(LookupError, match="no version of 'm' comes from run p9"):
        registry.find_version(client, "m", parent_run="p9")


def test_evidence_round_trip_and_version_tags(client: Any, tmp_path: Path) -> None:
    _, run_id = _version(client, tmp_path, "evidence", "p1")
    assert registry.load_evidence(client, run_id) is None
    evidence = Evidence(
        metrics={"closed/accuracy": 0.53, "closed/n": 14.0},
        safety=SafetyEvidence("v0.5", "medtune:x", {"label": "Low risk", "code": "L", "rank": 1},
                              {"vcr": {"label": "Low risk", "code": "L", "rank": 1, "name": "Violent crimes"}}, 0.1),
        validation_passed=True,
        lineage={"data_version": "d.dir", "git_commit": "c0ffee", "config_hash": "h", "parent_run": "p1"},
    )  # fmt: skip
    registry.log_json(client, run_id, evidence.to_json(), registry.EVIDENCE_FILE)
    assert registry.load_evidence(client, run_id) == evidence
    tags = registry.version_tags(evidence)
    assert tags == {
        "data_version": "d.dir", "git_commit": "c0ffee", "config_hash": "h", "medtune.parent_run": "p1",
        "metric.closed/accuracy": "0.53", "safety.version": "v0.5", "safety.sut": "medtune:x",
        "safety.overall": "Low risk", "safety.vcr": "Low risk", "safety.over_refusal": "0.1",
        "validation.success": "true",
    }  # fmt: skip


def test_run_tags_written_and_restored(client: Any, tmp_path: Path) -> None:
    _, run_id = _version(client, tmp_path, "tags", "p1")
    client.set_tag(run_id, "keep", "old")
    before = registry.run_tags(client, run_id, ["keep", "new"])
    assert before == {"keep": "old", "new": None}
    registry.write_run_tags(client, run_id, {"keep": "changed", "new": "x"})
    registry.write_run_tags(client, run_id, before)
    tags = client.get_run(run_id).data.tags
    assert tags["keep"] == "old" and "new" not in tags


def test_pip_requirements_pin_the_installed_versions() -> None:
    from importlib import metadata

    pins = dict(line.split("==") for line in registry.pip_requirements())
    assert pins["torch"] == metadata.version("torch").split("+")[0] and "+" not in pins["torch"]
    assert set(pins) == set(registry.REQUIREMENTS)


def test_version_run_of_a_missing_version_is_a_lookup_error(client: Any, tmp_path: Path) -> None:
    _version(client, tmp_path, "lookup", "p1")
    assert registry.version_run(client, "lookup", "1")[1] == {"medtune.parent_run": "p1"}
    with pytest.raises(LookupError, match="'lookup' has no version 7"):
        registry.version_run(client, "lookup", "7")
