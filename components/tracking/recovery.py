"""Finish or roll back the promotions an earlier command left unfinished, from the journal (issue 19), and note
the versions registered without a decision. The pipelines call it through ``pipelines.promote.recover_promotions``
(first thing in ``medtune promote`` and the register stage, and after the workspace lock is taken)::

    from components.tracking.recovery import recover
    for line in recover(state_root, "sqlite:///.medtune/mlflow/mlflow.db", model="medtune-vlm", orphans=True):
        ...   # "recovered medtune-vlm decision 2026...-9f3ab2c1 (version 4 promoted, interrupted after the alias
              #  moves): completed; champion 4, previous champion 1"

The rule is :func:`components.tracking.journal.plan_recovery`'s (finish an entry the registry still explains, roll
back one it does not); this module carries the plan out on MLflow: the alias moves, then for a finished entry what
the interrupted command had left to write (the decision tags, the model card, a register stage's retrain-run tags
and ``promotion/decision.json``), then the closing mark, appended to the journal and mirrored beside the record.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from components.tracking import journal, registry
from components.tracking.model_card import render_card


class RecoveryError(RuntimeError):
    """MLflow refused while an entry was being finished or rolled back; the message names the entry."""


def recover(
    state_root: Path,
    tracking_uri: str,
    *,
    model: str | None = None,
    orphans: bool = False,
    echo: Callable[[str], None] = print,
) -> list[str]:
    """Every open entry of every journal (``model``: that one's) finished or rolled back, and with ``orphans`` each
    version registered without a decision noted; returns the console lines, each also given to ``echo``. MLflow is
    only contacted when there is something to do or ``orphans`` is set."""
    files = journal.journals(state_root) if model is None else {model: journal.journal_path(state_root, model)}
    done: list[str] = []
    client = None
    for name, path in files.items():
        book = journal.Journal(path)
        pending = [e for e in book.entries() if e.state == "open"]
        if not pending and not orphans:
            continue
        client = client or registry.connect_client(tracking_uri)
        for entry in pending:
            if journal.writer_alive(entry.record):
                echo(f"{name} decision {entry.id} is being carried out by pid {entry.record['who']['pid']}: left alone")
                continue
            try:
                done.append(_recover(client, book, name, entry))
            except Exception as e:
                what = f"finishing {name} decision {entry.id} (version {entry.record['version']})"
                raise RecoveryError(f"{what} failed: {type(e).__name__}: {e}; it stays open for the next start") from e
            echo(done[-1])
        if orphans:
            try:
                noted = note_orphans(client, book, name)
            except Exception as e:
                what = f"looking for {name} versions without a decision failed"
                raise RecoveryError(f"{what}: {type(e).__name__}: {e}") from e
            for line in noted:
                echo(line)
                done.append(line)
    return done


def _recover(client: Any, book: journal.Journal, name: str, entry: journal.Entry) -> str:
    rec, version = entry.record, str(entry.record["version"])
    version_run = str((rec.get("runs") or {}).get("version_run") or "")
    try:
        registry.version_run(client, name, version)
        exists = True
    except LookupError:
        exists = False
    aliases = {m["alias"]: registry.alias_version(client, name, m["alias"]) for m in rec.get("moves", [])}
    plan = journal.plan_recovery(rec, aliases, exists)
    if exists and version_run and not registry.is_mirrored(client, version_run, entry.id):
        registry.mirror_decision(client, name, version_run, rec)  # killed between the journal file and MLflow
    for alias, target in plan.moves:
        registry.set_alias(client, name, alias, target)
    if plan.action == "complete":
        write_decision(client, name, rec)
    state = journal.COMPLETED if plan.action == "complete" else journal.ROLLED_BACK
    champion = registry.alias_version(client, name, registry.CHAMPION)
    closing = journal.mark(entry.id, state, champion=champion, reason=plan.reason)
    book.append(closing)
    if exists and version_run:
        registry.mirror_mark(client, version_run, closing)
    return (f"recovered {name} decision {entry.id} (version {version} {rec['decision']}, {plan.reason}): {state}; "
            f"champion {champion or 'none'}, previous champion {rec.get('champion_before') or 'none'}")  # fmt: skip


def write_decision(client: Any, name: str, rec: Mapping[str, Any]) -> None:
    """What the interrupted command had left to write: the decision tags, the card, and for the register stage the
    retrain run's tags and decision.json."""
    decision = journal.decision_of(rec)
    runs = rec.get("runs") or {}
    tags = registry.decision_tags(name, decision)
    keys = ("medtune.promotion.decision", "medtune.promotion.failed_gates")
    registry.write_version_tags(client, name, decision.version, {k: tags[k] for k in keys})
    if rec.get("stage") == "register" and runs.get("parent_run"):
        registry.write_run_tags(client, runs["parent_run"], tags)
        registry.log_json(client, runs["parent_run"], decision.to_json(), registry.DECISION_FILE)
        stage_tags = {"medtune.model_version": decision.version, "medtune.promotion.decision": decision.decision}
        registry.write_run_tags(client, runs["version_run"], stage_tags)  # the register stage's own run
    evidence = registry.load_evidence(client, runs["version_run"]) if runs.get("version_run") else None
    if evidence is not None:
        info = registry.load_json(client, runs["version_run"], registry.MODEL_INFO_FILE)
        card = render_card(name, decision.version, evidence, decision=decision, model_info=info)
        client.log_text(runs["version_run"], card, registry.CARD_FILE)


def note_orphans(client: Any, book: journal.Journal, name: str) -> list[str]:
    """Versions medtune registered (tag ``medtune.parent_run``) that no journal line and no decision tag names: the
    register stage died between "Created version N" and its journal entry. Each gets a "no decision" note; the
    version stays registered and ``medtune promote`` (newest by default, or ``--version N``) evaluates it."""
    seen = {str(r.get("version")) for r in book.records() if "id" in r}
    found = [
        (v, run)
        for v, run, tags in registry.versions(client, name)
        if v not in seen and "medtune.parent_run" in tags and "medtune.promotion.decision" not in tags
    ]
    lines = []
    champion = registry.alias_version(client, name, registry.CHAMPION) if found else None
    for version, run_id in found:
        note = journal.orphan_record(name, version, champion, run_id)
        book.append(note)
        registry.mirror_decision(client, name, run_id, note)
        lines.append(f"{name} version {version} was registered without a decision (registration interrupted): noted "
                     f"in the journal; `medtune promote --version {version}` evaluates it")  # fmt: skip
    return lines
