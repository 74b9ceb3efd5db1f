"""The promotion journal: every decision about a registered model, append-only, in the state folder (issue 19).

    from components.tracking import journal
    book = journal.Journal(journal.journal_path(state_root, "medtune-vlm"))   # <state>/registry/<name>/journal.jsonl
    entry = journal.decision_record(model="medtune-vlm", decision=decision, policy=policy, moves=moves, ...)
    book.append(entry)                                     # fsync'd before anything moves
    ...                                                    # mirror to MLflow, move the aliases, write the tags
    book.append(journal.mark(entry["id"], journal.COMMITTED, champion="4"))
    [e.state for e in book.entries()]                      # 'committed', 'completed', 'rolled back', 'open', 'noted'
    for row in journal.timeline(book.records()): print(journal.format_row(row))       # `medtune history`

A promotion is carried out in three steps (DESIGN.md, "Promotion as a journal"): the decision record is written
first (one JSON line: policy file text and sha256, every gate with value, threshold and pass/fail, the previous
champion, the candidate, the alias moves it makes, UTC time, user@host and the command, a decision id); then the
aliases move; then a mark line ``{"decision": id, "state": "committed"}`` closes it. Lines are only ever appended:
a version's earlier decisions stay, and a second ``medtune promote`` of the same version adds a second entry.

An entry without a mark was interrupted. :func:`plan_recovery` says what the next start does with it (carried
out by :mod:`components.tracking.recovery`). The rule: **finish it when the registry is still in a
state the record explains, roll it back when it is not.** The entry is the decision: the policy was applied to
recorded evidence and the record was durable before anything moved, so a crash after it is a crash in carrying the
decision out, and the next start carries it out (every alias the entry moves is at its recorded ``before`` or
``after``, and the candidate version still exists: the remaining moves are made, the tags written, ``completed``
appended). When someone changed the registry since (an alias the entry moves now points at a third version, or
the candidate was deleted), carrying out a stale decision would undo their change: the entry is rolled back
(an alias still where the entry put it goes back to the recorded ``before``, or is removed when there was none)
and ``rolled back`` appended with the reason. Either way the entry itself stays and names the previous champion.

A torn last line (a crash during the append itself) never had an effect (nothing moves before the fsync): readers
skip lines that are not JSON, and the next append starts on a fresh line after it rather than rewriting the file.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import socket
import sys
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, unquote

from components.tracking.promotion import Decision, Gate

JOURNAL = "journal.jsonl"
COMMITTED, COMPLETED, ROLLED_BACK = "committed", "completed", "rolled back"
NO_DECISION = "no decision"
INTERRUPTED_REGISTRATION = "registration interrupted"


def journal_path(state_root: Path, model: str) -> Path:
    """``<state>/registry/<model>/journal.jsonl`` (the name %-quoted, so any registered model name is one folder)."""
    return Path(state_root) / "registry" / quote(model, safe="") / JOURNAL


def journals(state_root: Path) -> dict[str, Path]:
    """Model name -> journal file, for every model with a journal under the state folder."""
    folder = Path(state_root) / "registry"
    if not folder.is_dir():
        return {}
    return {unquote(d.name): d / JOURNAL for d in sorted(folder.iterdir()) if (d / JOURNAL).is_file()}


def now_utc() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def new_id() -> str:
    """Sortable by time, unique without a counter: ``20261206T113002Z-9f3ab2c1``."""
    return f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"


def who() -> dict[str, Any]:
    """user@host, the command line (``medtune promote --version 4``) and the pid of the process writing."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # a container user without a passwd entry
        user = f"uid{os.getuid()}"
    host = socket.gethostname()
    argv = [Path(sys.argv[0]).name, *sys.argv[1:]] if sys.argv and sys.argv[0] else []
    return {"user": f"{user}@{host}", "host": host, "pid": os.getpid(), "command": " ".join(argv)}


def policy_record(path: str | Path, text: str) -> dict[str, str]:
    """The policy file as applied: its path, its text and the text's sha256."""
    return {"path": str(path), "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(), "text": text}


def move(alias: str, before: str | None, after: str | None) -> dict[str, str | None]:
    return {"alias": alias, "before": before, "after": after}


def decision_record(
    *,
    model: str,
    decision: Decision,
    policy: Mapping[str, str],
    moves: Sequence[Mapping[str, str | None]],
    stage: str,
    version_run: str,
    parent_run: str | None,
) -> dict[str, Any]:
    """The journal line of a decision, written before anything moves."""
    return {
        "type": "decision",
        "id": new_id(),
        "time": now_utc(),
        "model": model,
        "version": decision.version,
        "decision": decision.decision,
        "champion_before": decision.champion_before,
        "champion_after": decision.champion_after,
        "moves": [dict(m) for m in moves if m["before"] != m["after"]],
        "gates": [g.to_json() for g in decision.gates],
        "failed_gates": [g.name for g in decision.failed],
        "policy": dict(policy),
        "stage": stage,
        "runs": {"version_run": version_run, "parent_run": parent_run},
        "who": who(),
    }


def orphan_record(model: str, version: str, champion: str | None, version_run: str) -> dict[str, Any]:
    """A version registered without a decision (the register stage died after "Created version N")."""
    return {
        "type": "note",
        "id": new_id(),
        "time": now_utc(),
        "model": model,
        "version": version,
        "decision": NO_DECISION,
        "reason": INTERRUPTED_REGISTRATION,
        "champion_before": champion,
        "champion_after": champion,
        "moves": [],
        "gates": [],
        "failed_gates": [],
        "runs": {"version_run": version_run, "parent_run": None},
        "who": who(),
    }


def mark(decision_id: str, state: str, *, champion: str | None, reason: str | None = None) -> dict[str, Any]:
    """The line that closes an entry: committed (by its own command), completed or rolled back (by a later start)."""
    line: dict[str, Any] = {"decision": decision_id, "state": state, "time": now_utc(), "champion": champion}
    if reason:
        line["reason"] = reason
    line["who"] = who()
    return line


def decision_of(record: Mapping[str, Any]) -> Decision:
    """The :class:`Decision` an entry recorded (for the tags and the model card when a later start completes it)."""
    gates = tuple(Gate(**g) for g in record.get("gates", []))
    return Decision(record["decision"], gates, str(record["version"]), record.get("champion_before"),
                    record.get("champion_after"))  # fmt: skip


# -- the file -------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Entry:
    """A decision or note line, with the mark that closed it (None: still open)."""

    record: dict[str, Any]
    closed: dict[str, Any] | None

    @property
    def id(self) -> str:
        return str(self.record["id"])

    @property
    def state(self) -> str:
        if self.record.get("type") == "note":
            return "noted"
        return "open" if self.closed is None else str(self.closed["state"])


class Journal:
    """One model's journal file: append a line (fsync'd), read the lines back."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def append(self, line: Mapping[str, Any]) -> None:
        """Append one JSON line and fsync it (and its folders, when the file is new) before returning."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        created = not self.path.exists()
        text = json.dumps(line, sort_keys=True, separators=(",", ":")) + "\n"
        with self.path.open("ab") as fh:
            if not created and fh.tell() > 0 and not self._ends_with_newline():
                text = "\n" + text  # a torn line from a crash mid-append stays; this one starts on its own line
            fh.write(text.encode("utf-8"))
            fh.flush()
            os.fsync(fh.fileno())
        if created:  # the new file's name is durable too, and the folders made for it (<model>, registry)
            for folder in (self.path.parent, self.path.parent.parent, self.path.parent.parent.parent):
                fd = os.open(folder, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)

    def _ends_with_newline(self) -> bool:
        with self.path.open("rb") as fh:
            fh.seek(-1, os.SEEK_END)
            return fh.read(1) == b"\n"

    def records(self) -> list[dict[str, Any]]:
        """Every whole line, oldest first (a torn or foreign line is skipped)."""
        if not self.path.is_file():
            return []
        out = []
        for raw in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                line = json.loads(raw)
            except ValueError:
                continue
            if isinstance(line, dict):
                out.append(line)
        return out

    def entries(self) -> list[Entry]:
        return entries(self.records())


def entries(records: Iterable[Mapping[str, Any]]) -> list[Entry]:
    """Decision and note lines paired with the first mark that names them."""
    found: dict[str, dict[str, Any]] = {}
    marks: dict[str, dict[str, Any]] = {}
    for line in records:
        if "id" in line and "version" in line:
            found.setdefault(str(line["id"]), dict(line))
        elif "decision" in line and "state" in line:
            marks.setdefault(str(line["decision"]), dict(line))
    return [Entry(record, marks.get(key)) for key, record in found.items()]


def writer_alive(record: Mapping[str, Any]) -> bool:
    """Whether the process that wrote an entry still runs on this host (then it is in progress, not interrupted)."""
    writer = record.get("who") or {}
    pid = writer.get("pid")
    if writer.get("host") != socket.gethostname() or not isinstance(pid, int) or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# -- recovery -------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Plan:
    action: Literal["complete", "roll back"]
    moves: tuple[tuple[str, str | None], ...]  # (alias, target): None removes the alias
    reason: str


def plan_recovery(record: Mapping[str, Any], aliases: Mapping[str, str | None], candidate_exists: bool) -> Plan:
    """What a later start does with an open entry, given where its aliases point now (module docstring: finish
    it when the registry is still in a state the record explains, roll it back when it is not)."""
    moves = list(record.get("moves", []))
    undo = tuple((m["alias"], m["before"]) for m in moves if aliases.get(m["alias"]) == m["after"])
    if not candidate_exists:  # deleting a version deletes its aliases: those go back to where they were
        gone = tuple((m["alias"], m["before"]) for m in moves if aliases.get(m["alias"]) in (m["after"], None))
        return Plan(
            "roll back", tuple(u for u in gone if u[1] is not None), f"version {record['version']} no longer exists"
        )
    stray = [m for m in moves if aliases.get(m["alias"]) not in (m["before"], m["after"])]
    if stray:
        alias, now = stray[0]["alias"], aliases.get(stray[0]["alias"])
        return Plan(
            "roll back", undo, f"{alias} was removed since" if now is None else f"{alias} was moved to {now} since"
        )
    todo = tuple((m["alias"], m["after"]) for m in moves if aliases.get(m["alias"]) == m["before"])
    return Plan("complete", todo, "interrupted before the alias moves" if todo else "interrupted after the alias moves")


# -- the timeline ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TimelineRow:
    """One decision as ``medtune history`` and the run report show it."""

    time: str
    decision_id: str
    version: str
    decision: str  # promoted, refused, skipped, no decision
    outcome: str  # promoted, refused, skipped, completed, rolled back, unfinished, no decision
    champion_before: str | None
    champion_after: str | None
    failed_gates: tuple[str, ...]
    policy_sha256: str | None
    who: str
    command: str
    note: str


def timeline(records: Iterable[Mapping[str, Any]]) -> list[TimelineRow]:
    """The champion timeline, oldest first: each decision with what became of it."""
    rows = []
    for entry in entries(records):
        rec, closed = entry.record, entry.closed
        decision = str(rec.get("decision"))
        writer = rec.get("who") or {}
        note = str(rec.get("reason", ""))
        if entry.state == "noted":
            outcome, after = decision, rec.get("champion_before")
        elif closed is None:
            outcome, after, note = "unfinished", None, "interrupted; the next start finishes or rolls it back"
        else:
            state = str(closed["state"])
            outcome = decision if state == COMMITTED else state
            after = closed.get("champion", rec.get("champion_after"))
            if state != COMMITTED:
                by = (closed.get("who") or {}).get("command", "")
                note = f"{decision} decision {state} at {closed.get('time')} by `{by}`: {closed.get('reason', '')}"
        rows.append(
            TimelineRow(
                time=str(rec.get("time", "")),
                decision_id=entry.id,
                version=str(rec.get("version")),
                decision=decision,
                outcome=outcome,
                champion_before=rec.get("champion_before"),
                champion_after=after,
                failed_gates=tuple(rec.get("failed_gates", ())),
                policy_sha256=(rec.get("policy") or {}).get("sha256"),
                who=str(writer.get("user", "")),
                command=str(writer.get("command", "")),
                note=note.rstrip(": "),
            )
        )
    return rows


def format_row(row: TimelineRow) -> str:
    """One line: time, version, outcome, previous champion -> champion after, failed gates, policy hash, who."""
    time = row.time.replace("T", " ").replace("Z", " UTC")
    champion = f"champion {row.champion_before or 'none'} -> {row.champion_after or 'none'}"
    if row.champion_after == row.champion_before:
        champion = f"champion stays {row.champion_before or 'none'}"
    elif row.outcome == "unfinished":
        champion = f"champion was {row.champion_before or 'none'}"
    parts = [time, f"v{row.version}", f"{row.outcome:<11}", champion]
    if row.failed_gates:
        parts.append("failed: " + ", ".join(row.failed_gates))
    if row.policy_sha256:
        parts.append(f"policy {row.policy_sha256[:12]}")
    parts.append(f"by {row.who} ({row.command})" if row.command else f"by {row.who}")
    if row.note:
        parts.append(f"[{row.note}]")
    return "  ".join(parts)
