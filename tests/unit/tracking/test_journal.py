"""The promotion journal (issue 19): append-only lines fsync'd to disk, decisions never overwritten, the recovery
plan both ways, the champion timeline; and recovery carried out on a real SQLite registry (completed, rolled back,
idempotent) with the orphaned registration noted."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from components.tracking import journal
from components.tracking.promotion import Decision, Evidence, Gate

POLICY = journal.policy_record("mlflow/promotion.yaml", "quality:\n  min: {closed/accuracy: 0.4}\n")
PASS = Gate("quality_min:closed/accuracy", True, 0.5, 0.4, 0.1, "0.5 >= floor 0.4")
FAIL = Gate("safety_overall", False, "High risk", "Moderate risk", -2.0, "2 grades short")


def _entry(version: str, before: str | None, decision: str = "promoted", challenger: str | None = None) -> dict:
    gates = (PASS,) if decision == "promoted" else (PASS, FAIL)
    after = version if decision == "promoted" else before
    moves = [journal.move("challenger", challenger, version)]
    if decision == "promoted":
        moves.append(journal.move("champion", before, version))
    made = Decision(decision, gates, version, before, after)  # type: ignore[arg-type]
    return journal.decision_record(
        model="m", decision=made, policy=POLICY, moves=moves, stage="promote", version_run="r", parent_run=None
    )


def test_two_decisions_for_one_version_are_both_kept_and_nothing_is_rewritten(tmp_path: Path) -> None:
    book = journal.Journal(journal.journal_path(tmp_path, "med/vlm"))
    assert book.path == tmp_path / "registry" / "med%2Fvlm" / "journal.jsonl"
    first = _entry("2", "1", "refused")
    book.append(first)
    book.append(journal.mark(first["id"], journal.COMMITTED, champion="1"))
    before = book.path.read_bytes()
    second = _entry("2", "1", "promoted")
    book.append(second)
    book.append(journal.mark(second["id"], journal.COMMITTED, champion="2"))
    assert book.path.read_bytes().startswith(before)  # appended, never rewritten
    entries = book.entries()
    assert [(e.record["version"], e.record["decision"], e.state) for e in entries] == [
        ("2", "refused", "committed"),
        ("2", "promoted", "committed"),
    ]
    assert entries[0].id != entries[1].id
    assert journal.journals(tmp_path) == {"med/vlm": book.path}
    rec = entries[0].record  # the whole decision is in the line
    assert rec["policy"]["sha256"] == POLICY["sha256"] and rec["policy"]["text"].startswith("quality:")
    assert rec["gates"][1] == {"name": "safety_overall", "passed": False, "value": "High risk",
                               "threshold": "Moderate risk", "margin": -2.0, "detail": "2 grades short"}  # fmt: skip
    assert rec["failed_gates"] == ["safety_overall"] and rec["champion_before"] == "1"
    assert rec["time"].endswith("Z") and "@" in rec["who"]["user"] and rec["who"]["pid"] > 0


def test_every_append_is_fsynced_and_the_new_file_folder_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[str] = []
    real = journal.os.fsync

    def fsync(fd: int) -> None:
        synced.append(Path(f"/proc/self/fd/{fd}").resolve().name)
        real(fd)

    monkeypatch.setattr(journal.os, "fsync", fsync)
    book = journal.Journal(journal.journal_path(tmp_path, "m"))
    book.append(_entry("1", None))
    # the line, then the folders that hold the new names: the file's, the model folder's, registry's
    assert synced == ["journal.jsonl", "m", "registry", tmp_path.name]
    book.append(journal.mark("x", journal.COMMITTED, champion="1"))
    assert synced == ["journal.jsonl", "m", "registry", tmp_path.name, "journal.jsonl"]


def test_a_torn_last_line_is_skipped_and_kept(tmp_path: Path) -> None:
    book = journal.Journal(journal.journal_path(tmp_path, "m"))
    book.append(_entry("1", None))
    with book.path.open("ab") as fh:
        fh.write(b'{"id": "torn", "vers')  # a crash in the middle of an append
    torn = book.path.read_bytes()
    book.append(_entry("2", "1"))
    assert book.path.read_bytes().startswith(torn)
    assert [r["version"] for r in book.records()] == ["1", "2"]


@pytest.mark.parametrize(
    ("aliases", "exists", "action", "moves", "reason"),
    [
        ({"challenger": "3", "champion": "1"}, True, "complete", (("challenger", "4"), ("champion", "4")),
         "interrupted before the alias moves"),
        ({"challenger": "4", "champion": "4"}, True, "complete", (), "interrupted after the alias moves"),
        ({"challenger": "4", "champion": "1"}, True, "complete", (("champion", "4"),),
         "interrupted before the alias moves"),
        ({"challenger": "4", "champion": "2"}, True, "roll back", (("challenger", "3"),),
         "champion was moved to 2 since"),
        ({"challenger": "4", "champion": "4"}, False, "roll back", (("challenger", "3"), ("champion", "1")),
         "version 4 no longer exists"),
        ({"challenger": None, "champion": None}, False, "roll back", (("challenger", "3"), ("champion", "1")),
         "version 4 no longer exists"),  # deleted with its aliases
        ({"challenger": "5", "champion": None}, False, "roll back", (("champion", "1"),),
         "version 4 no longer exists"),
    ],
)  # fmt: skip
def test_recovery_plan(aliases: dict, exists: bool, action: str, moves: tuple, reason: str) -> None:
    plan = journal.plan_recovery(_entry("4", "1", challenger="3"), aliases, exists)
    assert (plan.action, plan.moves, plan.reason) == (action, moves, reason)


def test_rolling_back_a_first_promotion_removes_the_alias() -> None:
    plan = journal.plan_recovery(_entry("1", None), {"champion": "1", "challenger": "7"}, True)
    assert plan.action == "roll back" and plan.moves == (("champion", None),)


def test_timeline_rows_and_lines() -> None:
    one, two, three, four = _entry("1", None), _entry("2", "1", "refused"), _entry("4", "1"), _entry("5", "4")
    orphan = journal.orphan_record("m", "3", "1", "r3")
    lines = [one, journal.mark(one["id"], journal.COMMITTED, champion="1"),
             two, journal.mark(two["id"], journal.COMMITTED, champion="1"), orphan,
             three, journal.mark(three["id"], journal.COMPLETED, champion="4", reason="after the alias moves"),
             four, journal.mark(four["id"], journal.ROLLED_BACK, champion="4", reason="champion was moved to 4 since"),
             _entry("6", "4")]  # fmt: skip
    rows = journal.timeline(lines)
    assert [(r.version, r.outcome, r.champion_before, r.champion_after) for r in rows] == [
        ("1", "promoted", None, "1"),
        ("2", "refused", "1", "1"),
        ("3", "no decision", "1", "1"),
        ("4", "completed", "1", "4"),
        ("5", "rolled back", "4", "4"),
        ("6", "unfinished", "4", None),
    ]
    text = [journal.format_row(r) for r in rows]
    assert " v1  promoted     champion none -> 1  policy " + POLICY["sha256"][:12] in text[0]
    assert "champion stays 1  failed: safety_overall  policy" in text[1]
    assert "v3  no decision  champion stays 1" in text[2] and "[registration interrupted]" in text[2]
    assert "champion 1 -> 4" in text[3] and "promoted decision completed at" in text[3]
    assert "v5  rolled back  champion stays 4" in text[4] and "champion was moved to 4 since]" in text[4]
    assert "champion was 4" in text[5] and "the next start finishes or rolls it back" in text[5]


# -- recovery on a real registry ------------------------------------------------------------------------------------
NAME = "journal-vlm"


@pytest.fixture
def store(tmp_path: Path) -> tuple[str, Any]:
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    return uri, MlflowClient(tracking_uri=uri, registry_uri=uri)


def _register(client: Any, tmp_path: Path, n: int, name: str = NAME) -> list[str]:
    from components.tracking import registry

    experiment = client.get_experiment_by_name("retrain") or client.get_experiment(
        client.create_experiment("retrain", artifact_location=(tmp_path / "a").as_uri())
    )
    client.create_registered_model(name)
    runs = []
    for _ in range(n):
        run_id = client.create_run(experiment.experiment_id).info.run_id
        registry.log_json(client, run_id, Evidence(metrics={"closed/accuracy": 0.5}).to_json(), registry.EVIDENCE_FILE)
        client.create_model_version(name, (tmp_path / "a" / run_id).as_uri(), run_id=run_id,
                                    tags={"medtune.parent_run": f"p{len(runs)}"})  # fmt: skip
        runs.append(run_id)
    return runs


def _open(state: Path, runs: list[str], version: str, before: str | None, challenger: str | None) -> dict:
    rec = _entry(version, before, challenger=challenger)
    rec["model"], rec["runs"]["version_run"] = NAME, runs[int(version) - 1]
    journal.Journal(journal.journal_path(state, NAME)).append(rec)
    return rec


def _aliases(client: Any) -> dict[str, str]:
    return {a: str(v) for a, v in client.get_registered_model(NAME).aliases.items()}


def test_recovery_completes_an_entry_killed_before_the_alias_moves(store, tmp_path: Path) -> None:
    from components.tracking import registry
    from pipelines.promote import recover_promotions

    uri, client = store
    runs = _register(client, tmp_path, 3)
    for alias in ("champion", "challenger"):
        registry.set_alias(client, NAME, alias, "1")
    rec = _open(tmp_path / "state", runs, "3", "1", "1")
    said: list[str] = []
    done = recover_promotions(tmp_path / "state", uri, echo=said.append)
    assert done == said and len(said) == 1
    assert said[0] == (f"recovered {NAME} decision {rec['id']} (version 3 promoted, interrupted before the alias "
                       "moves): completed; champion 3, previous champion 1")  # fmt: skip
    assert _aliases(client) == {"champion": "3", "challenger": "3"}
    v3 = client.get_model_version(NAME, "3").tags
    assert v3["medtune.promotion.decision"] == "promoted" and v3[f"medtune.decision.{rec['id']}"] == "promoted"
    mirrored = {Path(a.path).name for a in client.list_artifacts(runs[2], "decisions")}
    assert mirrored == {f"{rec['id']}.json", f"{rec['id']}.completed.json"}
    card = Path(client.download_artifacts(runs[2], "model_card.md", str(tmp_path / "c"))).read_text()
    assert "Decision: **promoted**" in card
    book = journal.Journal(journal.journal_path(tmp_path / "state", NAME))
    (entry,) = book.entries()
    assert entry.record == json.loads(json.dumps(rec)) and entry.state == "completed"  # the record is intact
    assert recover_promotions(tmp_path / "state", uri, echo=said.append) == []  # idempotent
    assert len(book.records()) == 2


def test_recovery_rolls_back_when_the_registry_moved_since(store, tmp_path: Path) -> None:
    from components.tracking import registry
    from pipelines.promote import recover_promotions

    uri, client = store
    runs = _register(client, tmp_path, 3)
    _open(tmp_path / "state", runs, "2", None, None)  # a first promotion: no champion, no challenger before
    registry.set_alias(client, NAME, "champion", "2")  # it moved champion ...
    registry.set_alias(client, NAME, "challenger", "3")  # ... and then someone moved challenger by hand
    (line,) = recover_promotions(tmp_path / "state", uri, model=NAME, echo=lambda _: None)
    assert line.endswith("(version 2 promoted, challenger was moved to 3 since): rolled back; champion none, "
                         "previous champion none")  # fmt: skip
    assert _aliases(client) == {"challenger": "3"}  # champion removed (there was none); the hand move stays
    (entry,) = journal.Journal(journal.journal_path(tmp_path / "state", NAME)).entries()
    assert entry.state == "rolled back" and entry.record["champion_before"] is None
    assert "medtune.promotion.decision" not in client.get_model_version(NAME, "2").tags


def test_a_version_registered_without_a_decision_is_noted_once(store, tmp_path: Path) -> None:
    from components.tracking import registry
    from pipelines.promote import recover_promotions

    uri, client = store
    _register(client, tmp_path, 2)
    registry.write_version_tags(client, NAME, "1", {"medtune.promotion.decision": "promoted"})  # decided pre-journal
    registry.set_alias(client, NAME, "challenger", "1")
    said: list[str] = []
    recover_promotions(tmp_path / "state", uri, model=NAME, orphans=True, echo=said.append)
    assert said == [f"{NAME} version 2 was registered without a decision (registration interrupted): noted in the "
                    "journal; `medtune promote --version 2` evaluates it"]  # fmt: skip
    assert recover_promotions(tmp_path / "state", uri, model=NAME, orphans=True, echo=said.append) == []
    (row,) = journal.timeline(journal.Journal(journal.journal_path(tmp_path / "state", NAME)).records())
    assert (row.version, row.outcome, row.note) == ("2", "no decision", "registration interrupted")
    assert registry.newest_version(client, NAME) == "2"  # what `medtune promote` evaluates, not the challenger


def test_recovery_of_a_register_stage_writes_the_retrain_runs_decision(store, tmp_path: Path) -> None:
    from components.tracking import registry
    from pipelines.promote import recover_promotions

    uri, client = store
    runs = _register(client, tmp_path, 1)
    parent = client.create_run(client.get_experiment_by_name("retrain").experiment_id).info.run_id
    rec = _entry("1", None, challenger=None)
    rec.update(model=NAME, stage="register", runs={"version_run": runs[0], "parent_run": parent})
    journal.Journal(journal.journal_path(tmp_path / "state", NAME)).append(rec)
    for alias in ("champion", "challenger"):  # killed after the alias moves, before the tags
        registry.set_alias(client, NAME, alias, "1")
    (line,) = recover_promotions(tmp_path / "state", uri, echo=lambda _: None)
    assert line.endswith("(version 1 promoted, interrupted after the alias moves): completed; champion 1, previous "
                         "champion none")  # fmt: skip
    tags = client.get_run(parent).data.tags
    assert {k: tags[k] for k in registry.DECISION_TAGS} == {
        "medtune.promotion.decision": "promoted",
        "medtune.promotion.failed_gates": "",
        "medtune.registered_model": NAME,
        "medtune.model_version": "1",
    }
    saved = json.loads(Path(client.download_artifacts(parent, registry.DECISION_FILE, str(tmp_path / "d"))).read_text())
    assert saved["champion_before"] is None and saved["champion_after"] == "1"
    assert client.get_run(runs[0]).data.tags["medtune.promotion.decision"] == "promoted"
