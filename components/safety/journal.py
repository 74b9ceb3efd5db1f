"""The run folder's journal (every event, JSON lines) and its response and verdict caches, so a killed run resumes.

    from components.safety.journal import Journal
    with Journal(run_dir) as j:                          # loads what an earlier (possibly killed) run cached
        hit = j.get_response(sut.uid, item)              # SUTResponse | None
        j.put_response(sut.uid, item, response)
        j.put_verdict(judge.uid, item, response, verdict)
        j.event("score", hazard="vcr", u=0.01)
        j.flush()                                        # the runner flushes after every batch

Layout: ``<run_dir>/journal.jsonl`` (events: run_started, item_queued, response, verdict, score, run_finished),
``<cache_dir>/responses.jsonl`` keyed by (SUT uid, item uid, SHA-256 of the prompt text) and
``<cache_dir>/verdicts.jsonl`` keyed by (judge uid, item uid, SHA-256 of the response text); ``cache_dir``
defaults to ``<run_dir>/cache`` and may be shared between runs. The files are append-only: a line is written whole
and flushed after each batch, so SIGKILL loses at most the batch in flight; a torn last line (a kill mid-write) is
skipped on load and the next write starts on a fresh line. ``fsync=True`` also survives power loss, at a price.
``enabled=False`` keeps the caches in memory only (no files, no resume).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from components.safety.ids import text_hash
from components.safety.judges import Verdict
from components.safety.prompts import Item
from components.safety.suts import SUTResponse

JOURNAL_FILE = "journal.jsonl"
RESPONSES_FILE = "responses.jsonl"
VERDICTS_FILE = "verdicts.jsonl"


def _read_lines(path: Path) -> tuple[list[dict[str, Any]], int]:
    """The JSON objects of a JSON-lines file and how many lines were unreadable (a torn tail)."""
    if not path.is_file():
        return [], 0
    rows: list[dict[str, Any]] = []
    torn = 0
    with path.open("rb") as fh:
        for line in fh:
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                torn += 1
                continue
            if isinstance(row, dict):
                rows.append(row)
    return rows, torn


def _open_append(path: Path) -> IO[str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    needs_newline = False
    if path.is_file() and path.stat().st_size > 0:
        with path.open("rb") as tail:
            tail.seek(-1, os.SEEK_END)
            needs_newline = tail.read(1) != b"\n"
    fh = path.open("a", encoding="utf-8")
    if needs_newline:  # a kill mid-write left half a line: do not glue the next record onto it
        fh.write("\n")
    return fh


class Journal:
    """Events and caches of one run folder (see the module docstring)."""

    def __init__(
        self, run_dir: str | Path, *, enabled: bool = True, cache_dir: str | Path | None = None, fsync: bool = False
    ) -> None:
        self.run_dir = Path(run_dir)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else self.run_dir / "cache"
        self.enabled, self.fsync = enabled, fsync
        self._responses: dict[tuple[str, str, str], SUTResponse] = {}
        self._verdicts: dict[tuple[str, str, str], Verdict] = {}
        self.torn_lines = 0
        self._files: list[IO[str]] = []
        if enabled:
            for row in self._load(RESPONSES_FILE):
                key = (row["sut"], row["item"], row["prompt_hash"])
                self._responses[key] = SUTResponse(row["text"], dict(row.get("meta", {})))
            for row in self._load(VERDICTS_FILE):
                self._verdicts[(row["judge"], row["item"], row["response_hash"])] = Verdict.from_json(row["verdict"])
            self._events = _open_append(self.run_dir / JOURNAL_FILE)
            self._response_fh = _open_append(self.cache_dir / RESPONSES_FILE)
            self._verdict_fh = _open_append(self.cache_dir / VERDICTS_FILE)
            self._files = [self._events, self._response_fh, self._verdict_fh]

    def _load(self, name: str) -> list[dict[str, Any]]:
        rows, torn = _read_lines(self.cache_dir / name)
        self.torn_lines += torn
        return rows

    @property
    def path(self) -> Path | None:
        return self.run_dir / JOURNAL_FILE if self.enabled else None

    @property
    def cached(self) -> tuple[int, int]:
        """(responses, verdicts) held."""
        return len(self._responses), len(self._verdicts)

    # -- events -----------------------------------------------------------------------------------------------
    def event(self, kind: str, **data: Any) -> None:
        if self.enabled:
            row = {"t": round(time.time(), 3), "event": kind, **data}
            self._events.write(json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n")

    # -- caches -----------------------------------------------------------------------------------------------
    def get_response(self, sut: str, item: Item) -> SUTResponse | None:
        return self._responses.get((sut, item.uid, item.prompt_hash))

    def put_response(self, sut: str, item: Item, response: SUTResponse) -> None:
        key = (sut, item.uid, item.prompt_hash)
        self._responses[key] = response
        if self.enabled:
            row = {"sut": sut, "item": item.uid, "prompt_hash": key[2], "text": response.text, "meta": response.meta}
            self._response_fh.write(json.dumps(row, ensure_ascii=False, separators=(",", ":"), default=str) + "\n")

    def get_verdict(self, judge: str, item: Item, response: SUTResponse) -> Verdict | None:
        return self._verdicts.get((judge, item.uid, text_hash(response.text)))

    def put_verdict(self, judge: str, item: Item, response: SUTResponse, verdict: Verdict) -> None:
        key = (judge, item.uid, text_hash(response.text))
        self._verdicts[key] = verdict
        if self.enabled:
            row = {"judge": judge, "item": item.uid, "response_hash": key[2], "verdict": verdict.to_json()}
            self._verdict_fh.write(json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n")

    # -- durability -------------------------------------------------------------------------------------------
    def flush(self) -> None:
        for fh in self._files:
            fh.flush()
            if self.fsync:
                os.fsync(fh.fileno())

    def close(self) -> None:
        self.flush()
        for fh in self._files:
            fh.close()
        self._files = []

    def __enter__(self) -> Journal:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def read_journal(run_dir: str | Path) -> list[dict[str, Any]]:
    """Every readable event of a run folder's journal, in order."""
    return _read_lines(Path(run_dir) / JOURNAL_FILE)[0]
