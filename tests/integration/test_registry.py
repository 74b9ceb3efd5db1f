"""The model registry end to end (issue 9, items 1-2): two retrain runs register two versions (the runs are
``test_retrain_flow.py``'s; the checks are here); the first becomes
champion, the second (graded on the comply-everything SUT) is refused with its failing gates named and the champion
alias stays; ``medtune promote`` refuses it again; a fresh Python process loads ``models:/<name>@champion`` and
answers a question and generates an image exactly as the trained folder does in this process. And: a promotion
interrupted between its steps (a real Prefect transaction over a real SQLite registry) leaves the aliases and
tags as they were. The network is cut off throughout."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.conftest import assert_offline, cli_env, medtune

pytestmark = pytest.mark.integration

SMALL = ["--config", "configs/smoke.yaml"]
NAME = "medtune-vlm"

PREDICT = textwrap.dedent(
    """
    import json, sys
    import mlflow, pandas as pd
    rows = json.loads(sys.stdin.read())
    model = mlflow.pyfunc.load_model("models:/{name}@champion")
    out = model.predict(pd.DataFrame(rows), params={{"max_new_tokens": 8}})
    print(json.dumps(out.to_dict(orient="records")))
    """
)


def _client(ws: Path) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{ws / '.medtune' / 'mlflow' / 'mlflow.db'}")


def _aliases(client: Any, name: str) -> dict[str, str]:
    return {alias: str(v) for alias, v in client.get_registered_model(name).aliases.items()}


def relax_quality_floor(ws: Path) -> None:
    """The smoke profile's quality means nothing (configs/smoke.yaml): its closed-accuracy floor goes to 0."""
    policy_file = ws / "mlflow" / "promotion.yaml"
    policy = yaml.safe_load(policy_file.read_text())
    policy["quality"]["min"] = {"closed/accuracy": 0.0}
    policy_file.write_text(yaml.safe_dump(policy))


def assert_second_unsafe_version_refused_and_champion_loads(
    ws: Path, env: dict[str, str], first: Any, second: Any, tmp_path: Path
) -> None:
    """After two smoke retrains in ``ws`` (the first as is, the second with ``safety.sut=comply_all``), run by
    ``tests/integration/test_retrain_flow.py`` (one pair of retrains serves both tests: they take minutes)."""
    assert f"register: {NAME} version 1 promoted to champion (was none)" in first.stdout
    assert "register: FAIL safety_overall: High risk (rank 5) vs at least Moderate risk (rank 3): 2 grades short" in (
        second.stdout
    )
    assert f"register: {NAME} version 2 refused (champion stays 1): " in second.stdout

    client = _client(ws)
    assert _aliases(client, NAME) == {"champion": "1", "challenger": "2"}
    v2 = client.get_model_version(NAME, "2")
    parent = v2.tags["medtune.parent_run"]
    tags = client.get_run(parent).data.tags
    failed = tags["medtune.promotion.failed_gates"].split(",")
    assert tags["medtune.promotion.decision"] == "refused" and tags["medtune.model_version"] == "2"
    assert "safety_overall" in failed and "safety_sut" in failed and "safety_hazard:vcr" in failed
    assert not any(g.startswith(("quality", "regression", "data")) for g in failed)  # same model, same data
    assert v2.tags["safety.overall"] == "High risk" and v2.tags["safety.sut"] == "canned:comply_all"
    assert v2.tags["data_version"] == tags["data_version"] and len(v2.tags["git_commit"]) == 40
    decision = json.loads(Path(client.download_artifacts(parent, "promotion/decision.json", str(tmp_path))).read_text())
    assert decision["decision"] == "refused" and decision["champion_before"] == decision["champion_after"] == "1"
    overall = next(g for g in decision["gates"] if g["name"] == "safety_overall")
    assert overall == {"name": "safety_overall", "passed": False, "value": "High risk", "threshold": "Moderate risk",
                       "margin": -2.0, "detail": overall["detail"]}  # fmt: skip
    card = Path(client.download_artifacts(v2.run_id, "model_card.md", str(tmp_path))).read_text()
    assert card.startswith(f"# {NAME} v2") and "Decision: **refused**" in card
    v1 = client.get_model_version(NAME, "1")
    assert client.get_run(v1.tags["medtune.parent_run"]).data.tags["medtune.promotion.decision"] == "promoted"

    again = medtune(["promote", "--version", "2"], ws, env)
    assert again.returncode == 1, again.output
    assert "FAIL safety_overall" in again.stdout and f"{NAME} version 2 refused (champion stays 1)" in again.stdout
    assert _aliases(client, NAME) == {"champion": "1", "challenger": "2"}
    card = Path(client.download_artifacts(v2.run_id, "model_card.md", str(tmp_path / "again"))).read_text()
    assert "| adapter method | hlora |" in card and "| safety_overall | **no** | High risk |" in card

    # a fresh process: the registry alone, from a folder outside the workspace
    from components.tracking.pyfunc_model import VLMPredictor, file_to_base64

    records = [json.loads(line) for line in (ws / "data" / "vlhealth" / "records.jsonl").read_text().splitlines()]
    image = next(r["image"] for r in records if r["split"] == "test" and r["modality"] == "CT")
    png = file_to_base64(ws / "data" / "vlhealth" / image)
    rows = [
        {"task": "comprehension", "question": "What modality is this?", "image": png},
        {"task": "generation", "question": "Convert this CT slice into a T2-weighted MRI.", "image": png},
    ]
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    load_started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", PREDICT.format(name=NAME)],
        input=json.dumps(rows),
        cwd=outside,
        env={**env, "MLFLOW_TRACKING_URI": f"sqlite:///{ws / '.medtune' / 'mlflow' / 'mlflow.db'}"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    load_seconds = time.perf_counter() - load_started
    assert proc.returncode == 0, proc.stderr[-3000:]
    predicted = json.loads(proc.stdout.strip().splitlines()[-1])
    assert predicted[0]["image"] == "" and predicted[1]["image"]
    (model_dir,) = (ws / ".medtune" / "train").glob("*/model")  # both runs trained (re-used) one model
    expected = VLMPredictor.load(model_dir).predict(rows, max_new_tokens=8)
    assert predicted == expected  # the registered champion answers exactly as the trained folder does
    print(f"fresh-process load + predict {load_seconds:.1f} s")


APPLY = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from components.runtime import StatePaths, configure_environment

    args = json.loads(sys.argv[1])
    configure_environment(StatePaths(Path(args["state"])).make())  # as every medtune command does, before prefect
    from mlflow import MlflowClient
    from components.tracking.promotion import Decision
    from pipelines import promote

    client = MlflowClient(tracking_uri=args["uri"])
    real_write = promote.write_artifacts

    def disk_full(*_):
        raise OSError("disk full while writing the decision")

    def state():  # what the test checks: every alias, and the medtune tags of runs and versions
        out = {}
        for item in args["promotions"]:
            model = client.get_registered_model(item["name"])
            version = client.get_model_version(item["name"], item["version"])
            out[item["name"]] = {
                "aliases": {a: str(v) for a, v in model.aliases.items()},
                "run_tags": sorted(k for k in client.get_run(item["parent"]).data.tags if k.startswith("medtune.")),
                "version_tags": sorted(k for k in (version.tags or {}) if k.startswith("medtune.")),
            }
        return out

    for fail in (True, False):
        promote.write_artifacts = disk_full if fail else real_write  # the transaction's last step fails, or not
        for item in args["promotions"]:
            decision = Decision("promoted", (), item["version"], item["before"], item["version"])
            record = promote.Record(args["uri"], item["name"], item["version"], item["parent"], item["run"], "# c")
            try:
                promote.apply_decision(args["uri"], decision, record, challenger=True)
            except OSError as e:
                print("rolled back", item["name"], e)
        print(json.dumps(state()))
    """
)


def test_interrupted_promotion_leaves_the_registry_as_it_was(netguard, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    from components.tracking import registry

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("retrain", artifact_location=(tmp_path / "artifacts").as_uri())
    runs = []
    for name in (NAME, NAME, "fresh-model"):
        parent = client.create_run(experiment).info.run_id
        child = client.create_run(experiment, tags={"mlflow.parentRunId": parent}).info.run_id
        if not client.search_registered_models(f"name = '{name}'"):
            client.create_registered_model(name)
        client.create_model_version(name, (tmp_path / "artifacts" / child).as_uri(), run_id=child)
        runs.append((parent, child))
    registry.set_alias(client, NAME, registry.CHAMPION, "1")
    registry.set_alias(client, NAME, registry.CHALLENGER, "1")
    promotions = [
        {"name": NAME, "version": "2", "before": "1", "parent": runs[1][0], "run": runs[1][1]},
        {"name": "fresh-model", "version": "1", "before": None, "parent": runs[2][0], "run": runs[2][1]},
    ]
    args = json.dumps({"uri": uri, "promotions": promotions, "state": str(tmp_path / ".medtune")})
    proc = subprocess.run(
        [sys.executable, "-c", APPLY, args],
        cwd=tmp_path,
        env=cli_env(netguard),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[:2] == [f"rolled back {NAME} disk full while writing the decision",
                         "rolled back fresh-model disk full while writing the decision"]  # fmt: skip
    interrupted, completed = json.loads(lines[2]), json.loads(lines[3])
    # interrupted after both alias moves and the tags: everything as it was (no champion: the alias is removed)
    assert interrupted == {
        NAME: {"aliases": {"champion": "1", "challenger": "1"}, "run_tags": [], "version_tags": []},
        "fresh-model": {"aliases": {}, "run_tags": [], "version_tags": []},
    }
    # nothing was left half-done: the same promotions then go through
    assert completed[NAME]["aliases"] == {"champion": "2", "challenger": "2"}
    assert completed["fresh-model"]["aliases"] == {"champion": "1", "challenger": "1"}
    assert completed[NAME]["run_tags"] == sorted(registry.DECISION_TAGS)
    tags = client.get_run(runs[1][0]).data.tags
    assert tags["medtune.promotion.decision"] == "promoted" and tags["medtune.model_version"] == "2"
    saved = client.download_artifacts(runs[1][0], "promotion/decision.json", str(tmp_path))
    assert json.loads(Path(saved).read_text())["champion_after"] == "2"
    assert_offline(netguard)
