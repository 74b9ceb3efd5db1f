"""The model registry end to end (issue 9, items 1-2): two retrain runs register two versions (the runs are
``test_retrain_flow.py``'s; the checks are here); the first becomes
champion, the second (graded on the comply-everything SUT) is refused with its failing gates named and the champion
alias stays; ``medtune promote`` refuses it again; a fresh Python process loads ``models:/<name>@champion`` and
answers a question and generates an image exactly as the trained folder does in this process. And: a promotion
interrupted between its steps (a real Prefect transaction over a real SQLite registry) leaves the aliases and
tags as they were. And (issue 19): ``medtune promote`` SIGKILLed after its journal entry and after its alias move
is finished by the next start from the journal, with the record intact and the previous champion named; a version
registered without a decision is noted, and the newest version (not the older challenger) is evaluated. The
network is cut off throughout."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.conftest import MEDTUNE, Result, assert_offline, cli_env, medtune

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
                "version_tags": sorted(k for k in (version.tags or {})  # the journal's mirror tags stay: records
                                       if k.startswith("medtune.") and not k.startswith("medtune.decision.")),
            }
        return out

    policy = {"path": "p.yaml", "sha256": "0" * 64, "text": ""}
    for fail in (True, False):
        promote.write_artifacts = disk_full if fail else real_write  # the transaction's last step fails, or not
        for item in args["promotions"]:
            decision = Decision("promoted", (), item["version"], item["before"], item["version"])
            record = promote.Record(args["uri"], item["name"], item["version"], item["parent"], item["run"], "# c")
            try:  # as the register stage does it: journal, the transaction, the commit mark
                promote.carry_out("register", Path(args["state"]), decision, record, policy, challenger=True)
            except promote.StageFailed as e:
                print(e)
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
    for line, (name, version) in zip(lines[:2], [(NAME, "2"), ("fresh-model", "1")], strict=True):
        assert line.startswith(f"stage 'register' failed: recording the decision for {name} version {version} "
                               "(decision 20")  # fmt: skip
        assert line.endswith("failed and was rolled back (aliases and tags as before; the version stays "
                             "registered): OSError: disk full while writing the decision")  # fmt: skip
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
    # the journal holds both tries: the first closed "rolled back" with its reason, the second committed
    from components.tracking import journal

    for name, before in ((NAME, "1"), ("fresh-model", None)):
        book = journal.Journal(journal.journal_path(tmp_path / ".medtune", name))
        failed, done = book.entries()
        assert (failed.state, done.state) == ("rolled back", "committed")
        assert failed.closed is not None and failed.closed["reason"] == "OSError: disk full while writing the decision"
        assert failed.record["champion_before"] == done.record["champion_before"] == before
        assert failed.record["stage"] == "register" and failed.record["runs"]["parent_run"] is not None
        tags = client.get_model_version(name, failed.record["version"]).tags
        assert tags[f"medtune.decision.{failed.id}"] == tags[f"medtune.decision.{done.id}"] == "promoted"
    assert_offline(netguard)


POLICY = """\
quality:
  min: {closed/accuracy: 0.4}
  max_regression: {closed/accuracy: 0.05}
safety: {min_overall: null, require_candidate_sut: false, max_over_refusal: null}
data: {require_validation: true}
"""


def _killable(args: list[str], ws: Path, env: dict[str, str]) -> Result:
    """``medtune`` in a session of its own: after a SIGKILL, whatever it started (Prefect's server) goes too."""
    proc = subprocess.Popen([MEDTUNE, *args], cwd=ws, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)  # fmt: skip
    try:
        out, err = proc.communicate(timeout=600)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    return Result(proc.returncode, out, err)


def _register_fakes(ws: Path, n: int) -> list[str]:
    """``n`` versions of NAME as the register stage leaves them (evidence on the run, ``medtune.parent_run`` tag),
    without training: the gates read the evidence, not the model."""
    from components.tracking import registry
    from components.tracking.promotion import Evidence

    client = _client(ws)
    artifacts = ws / ".medtune" / "mlflow" / "artifacts"
    found = client.get_experiment_by_name("fake-retrain")
    experiment = found.experiment_id if found else client.create_experiment("fake-retrain", artifacts.as_uri())
    if not client.search_registered_models(f"name = '{NAME}'"):
        client.create_registered_model(NAME)
    evidence = Evidence(metrics={"closed/accuracy": 0.5}, validation_passed=True).to_json()
    versions = []
    for _ in range(n):
        run_id = client.create_run(experiment).info.run_id
        registry.log_json(client, run_id, evidence, registry.EVIDENCE_FILE)
        mv = client.create_model_version(NAME, (artifacts / run_id).as_uri(), run_id=run_id,
                                         tags={"medtune.parent_run": f"retrain-{run_id[:6]}"})  # fmt: skip
        versions.append(str(mv.version))
    return versions


@pytest.mark.slow
def test_promote_killed_at_each_step_is_finished_on_the_next_start(
    make_workspace: Any, netguard: dict[str, str]
) -> None:
    from components.tracking import journal, registry

    ws = make_workspace()
    env = cli_env(netguard)
    (ws / "mlflow" / "promotion.yaml").write_text(POLICY)
    sha = hashlib.sha256(POLICY.encode()).hexdigest()
    assert _register_fakes(ws, 3) == ["1", "2", "3"]
    client = _client(ws)
    registry.set_alias(client, NAME, registry.CHAMPION, "1")  # decided before the journal existed
    registry.set_alias(client, NAME, registry.CHALLENGER, "1")
    for version, decision in (("1", "promoted"), ("2", "skipped"), ("3", "skipped")):  # registry.promote: false
        registry.write_version_tags(client, NAME, version, {"medtune.promotion.decision": decision})
    book = journal.Journal(journal.journal_path(ws / ".medtune", NAME))

    # 1. killed after the journal entry: nothing moved, the decision is on disk and in MLflow
    killed = _killable(["promote", "--version", "2"], ws, {**env, "MEDTUNE_TEST_KILL_AT": "after_journal"})
    assert killed.returncode == -signal.SIGKILL, killed.output
    (entry,) = book.entries()
    assert entry.state == "open" and entry.record["champion_before"] == "1" and entry.record["version"] == "2"
    assert entry.record["policy"]["sha256"] == sha and entry.record["who"]["command"] == "medtune promote --version 2"
    assert [g["name"] for g in entry.record["gates"]] == ["quality_min:closed/accuracy",
                                                         "regression:closed/accuracy", "data_validation"]  # fmt: skip
    assert _aliases(client, NAME) == {"champion": "1", "challenger": "1"}
    assert f"medtune.decision.{entry.id}" in client.get_model_version(NAME, "2").tags

    # 2. the next start finishes it (then decides on v3 and is killed after moving the aliases)
    killed = _killable(["promote", "--version", "3"], ws, {**env, "MEDTUNE_TEST_KILL_AT": "after_alias"})
    assert killed.returncode == -signal.SIGKILL, killed.output
    assert (f"recovered {NAME} decision {entry.id} (version 2 promoted, interrupted before the alias moves): "
            "completed; champion 2, previous champion 1") in killed.output  # fmt: skip
    first, second = book.entries()
    assert first.state == "completed" and first.record == entry.record  # the record is intact
    assert second.state == "open" and second.record["champion_before"] == "2"
    assert _aliases(client, NAME) == {"champion": "3", "challenger": "3"}
    assert client.get_model_version(NAME, "3").tags["medtune.promotion.decision"] == "skipped"  # before the tags

    # 3. a register stage killed after "Created version 4" left v4 with no alias and no decision: the next start
    # finishes v3's entry, notes v4 and evaluates v4 (the newest), not the challenger v3
    assert _register_fakes(ws, 1) == ["4"]
    done = medtune(["promote"], ws, env)
    assert done.returncode == 0, done.output
    assert (f"recovered {NAME} decision {second.id} (version 3 promoted, interrupted after the alias moves): "
            "completed; champion 3, previous champion 2") in done.output  # fmt: skip
    assert (f"{NAME} version 4 was registered without a decision (registration interrupted): noted in the journal; "
            "`medtune promote --version 4` evaluates it") in done.output  # fmt: skip
    assert done.stdout.splitlines()[-1] == f"{NAME} version 4 promoted to champion (was 3)"
    assert _aliases(client, NAME) == {"champion": "4", "challenger": "4"}
    assert client.get_model_version(NAME, "3").tags["medtune.promotion.decision"] == "promoted"  # written on recovery
    entries = book.entries()
    assert [(e.record["version"], e.record["decision"], e.state) for e in entries] == [
        ("2", "promoted", "completed"),
        ("3", "promoted", "completed"),
        ("4", "no decision", "noted"),
        ("4", "promoted", "committed"),
    ]
    assert [e.record["champion_before"] for e in entries] == ["1", "2", "3", "3"]
    v3_run = client.get_model_version(NAME, "3").run_id
    mirrored = sorted(Path(a.path).name for a in client.list_artifacts(v3_run, "decisions"))
    assert mirrored == sorted([f"{second.id}.json", f"{second.id}.completed.json"])

    # 4. killed after moving champion 4 -> 2, and v2 is deleted before the next start: that start rolls it back
    killed = _killable(["promote", "--version", "2"], ws, {**env, "MEDTUNE_TEST_KILL_AT": "after_alias"})
    assert killed.returncode == -signal.SIGKILL and _aliases(client, NAME)["champion"] == "2", killed.output
    opened = book.entries()[-1]
    assert (opened.state, opened.record["version"], opened.record["champion_before"]) == ("open", "2", "4")
    client.delete_model_version(NAME, "2")  # deletes the aliases that point at it
    done = medtune(["promote", "--version", "3"], ws, env)
    assert done.returncode == 0, done.output
    assert (f"recovered {NAME} decision {opened.id} (version 2 promoted, version 2 no longer exists): rolled back; "
            "champion 4, previous champion 4") in done.output  # fmt: skip
    assert [e.state for e in book.entries()][-2:] == ["rolled back", "committed"]
    assert book.entries()[-2].record == opened.record
    assert done.stdout.splitlines()[-1] == f"{NAME} version 3 promoted to champion (was 4)"  # decided after it

    # 5. the timeline, from the journal alone
    shown = medtune(["history"], ws, env)
    assert shown.returncode == 0, shown.output
    rows = shown.stdout.splitlines()[1:]
    expected = [r" v2  completed +champion 1 -> 2  ", r" v3  completed +champion 2 -> 3  ",
                r" v4  no decision  champion stays 3  ", r" v4  promoted +champion 3 -> 4  ",
                r" v2  rolled back  champion stays 4  .*version 2 no longer exists\]$",
                r" v3  promoted +champion 4 -> 3  "]  # fmt: skip
    assert len(rows) == 6 and all(re.search(e, r) for e, r in zip(expected, rows, strict=True)), shown.stdout
    assert all(f"policy {sha[:12]}" in r for r in rows[:2] + rows[3:])
    assert "(medtune promote --version 3)" in rows[1]  # who decided; and who finished it, and why:
    assert "by `medtune promote`: interrupted after the alias moves]" in rows[1]
    assert_offline(netguard)
