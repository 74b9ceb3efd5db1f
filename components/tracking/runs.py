"""Parent and child runs for a flow, with explicit run ids (no global "active run" state).

A flow opens one parent run; each stage opens a child run tagged ``mlflow.parentRunId`` so the MLflow UI nests
it. Tasks pass run ids (strings) to each other, never run objects::

    session = TrackingSession.connect(uri, "retrain", artifact_root)
    parent = session.start_run("retrain", tags={"data_version": "..."})
    with session.child(parent, "data") as run_id:
        session.log_metrics(run_id, {"records": 123})
    session.finish(parent)

Secrets never reach MLflow: :func:`redact` blanks values whose key names a secret, and only the resolved config
(which holds no credentials: those come from the environment) is logged as params.

Every run is tagged with the process that opened it (:class:`Owner`: pid, host, the kernel's start time of the
process), so a run a killed command left RUNNING is found and closed at the next start (:func:`reconcile`, issue 19).
The first connection of a process to a SQLite store happens under a short creation lock beside the database
(:func:`store_lock`): two commands starting together must not both run MLflow's schema migrations.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SECRET_KEY = re.compile(r"(secret|password|passwd|token|access_key|credential|api_key)", re.IGNORECASE)
MAX_PARAM_LEN = 6000  # MLflow's limit on a param value


_METRIC_BAD = re.compile(r"[^\w\-. :/]")


def metric_name(key: str) -> str:
    """An MLflow-legal metric name: ``closed/accuracy/source=phantom`` -> ``closed/accuracy/source:phantom``."""
    return _METRIC_BAD.sub("_", key.replace("=", ":"))


def redact(params: Mapping[str, Any]) -> dict[str, Any]:
    return {k: ("***" if SECRET_KEY.search(k) else v) for k, v in params.items()}


def flatten_params(tree: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"data": {"workers": 1}}`` -> ``{"data.workers": "1"}``; lists are kept as their JSON-ish text."""
    flat: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_params(value, f"{name}."))
        else:
            flat[name] = str(value)[:MAX_PARAM_LEN]
    return redact(flat)


@dataclass
class TrackingSession:
    """A connection to one tracking store and one experiment."""

    client: Any  # mlflow.MlflowClient
    experiment_id: str
    uri: str

    @classmethod
    def connect(cls, uri: str, experiment: str, artifact_root: Path | None = None) -> TrackingSession:
        import mlflow
        from mlflow import MlflowClient

        ensure_store(uri)
        before = os.environ.get("MLFLOW_TRACKING_URI")
        mlflow.set_tracking_uri(uri)  # the fluent API (log_model) uses it; mlflow also writes it to os.environ ...
        if before is None:  # ... which would leak this store into later connections of the process: undo that
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = before
        client = MlflowClient(tracking_uri=uri)
        found = client.get_experiment_by_name(experiment)
        if found is None:
            location = None
            if artifact_root is not None:
                location = (artifact_root / experiment).resolve().as_uri()
            experiment_id = client.create_experiment(experiment, artifact_location=location)
        else:
            experiment_id = found.experiment_id
        return cls(client, experiment_id, uri)

    def start_run(
        self,
        name: str,
        *,
        parent: str | None = None,
        tags: Mapping[str, str] | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> str:
        all_tags = Owner.current().tags() | dict(tags or {})
        if parent is not None:
            all_tags["mlflow.parentRunId"] = parent
        run = self.client.create_run(self.experiment_id, run_name=name, tags=all_tags)
        run_id: str = run.info.run_id
        if params:
            self.log_params(run_id, params)
        return run_id

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:MAX_PARAM_LEN]) for k, v in redact(params).items()]
        for i in range(0, len(items), 100):  # MLflow accepts at most 100 params per batch
            self.client.log_batch(run_id, params=items[i : i + 100])

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int = 0) -> None:
        self.log_metric_steps(run_id, [(step, metrics)])

    def log_metric_steps(self, run_id: str, rows: Sequence[tuple[int, Mapping[str, float]]]) -> None:
        """Many steps' metrics in as few requests as possible (``log_batch`` takes 1,000 metrics at a time)."""
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(metric_name(k), float(v), now, step) for step, metrics in rows for k, v in metrics.items()]
        for i in range(0, len(items), 1000):
            self.client.log_batch(run_id, metrics=items[i : i + 1000])

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_tag(run_id, key, value)

    def log_artifact(self, run_id: str, path: Path, artifact_path: str | None = None) -> None:
        if path.is_dir():
            self.client.log_artifacts(run_id, str(path), artifact_path)
        else:
            self.client.log_artifact(run_id, str(path), artifact_path)

    def log_dict(self, run_id: str, data: Any, artifact_file: str) -> None:
        self.client.log_dict(run_id, data, artifact_file)

    def finish(self, run_id: str, *, failed: bool = False) -> None:
        self.client.set_terminated(run_id, status="FAILED" if failed else "FINISHED")

    @contextmanager
    def child(self, parent: str, stage: str, **kwargs: Any) -> Iterator[str]:
        """A child run for one stage; marked FAILED if the block raises."""
        run_id = self.start_run(stage, parent=parent, tags={"medtune.stage": stage, **kwargs.pop("tags", {})}, **kwargs)
        try:
            yield run_id
        except BaseException:
            self.finish(run_id, failed=True)
            raise
        self.finish(run_id)


# -- the store created once, runs closed after a crash (issue 19) ---------------------------------------------------

#: Tags naming the process that opened a run; ``medtune.lock`` is the workspace lock's token the process ran under.
PID_TAG, HOST_TAG, START_TAG, LOCK_TAG = "medtune.pid", "medtune.host", "medtune.proc_start", "medtune.lock"
RECONCILED_TAG = "medtune.reconciled"
LOCK_ENV = "MEDTUNE_LOCK_HELD"  # set by pipelines/lock.py in the process holding the workspace and its children


def process_start(pid: int) -> str:
    """The kernel's start time of ``pid`` (clock ticks since boot, /proc/PID/stat field 22): with the pid it names
    one process, even after the pid is reused. "" where unknown (not Linux, no such process)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    fields = stat.rsplit(")", 1)[-1].split()  # the command name (field 2) may hold spaces and parentheses
    return fields[19] if len(fields) > 19 and fields[0] != "Z" else ""  # a zombie has exited


@dataclass(frozen=True)
class Owner:
    """The process that opened a run (or holds the workspace lock)."""

    pid: int
    host: str
    start: str = ""  # :func:`process_start`
    lock: str = field(default="", compare=False)  # the lock token it ran under

    @classmethod
    def current(cls) -> Owner:
        pid = os.getpid()
        return cls(pid, socket.gethostname(), process_start(pid), os.environ.get(LOCK_ENV, ""))

    @classmethod
    def from_tags(cls, tags: Mapping[str, str]) -> Owner | None:
        try:
            return cls(int(tags[PID_TAG]), tags[HOST_TAG], tags.get(START_TAG, ""), tags.get(LOCK_TAG, ""))
        except (KeyError, ValueError):
            return None

    def tags(self) -> dict[str, str]:
        return {PID_TAG: str(self.pid), HOST_TAG: self.host, START_TAG: self.start, LOCK_TAG: self.lock}

    def alive(self) -> bool | None:
        """Whether the process still runs; None when it ran on another host (nothing to tell it by)."""
        if self.host != socket.gethostname():
            return None
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # another user's process holds the pid
            pass
        now = process_start(self.pid)
        if Path("/proc/self/stat").exists() and not now:
            return False  # gone between the two looks, or a zombie
        return not (self.start and now and now != self.start)  # the pid was reused by a later process


_READY: set[str] = set()  # the stores this process has opened once


def _sqlite_file(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///") or uri.startswith("sqlite:///:memory:"):
        return None
    return Path(uri.removeprefix("sqlite:///"))


@contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Hold ``<database>.lock`` (an OS lock, released by the kernel if the process dies) around the first
    connection to a SQLite store: MLflow creates the schema and runs its migrations on a process's first connection,
    and two processes doing that at the same moment left a half-migrated database (issue 19). No-op for other
    stores (a server runs its own migrations once)."""
    db = _sqlite_file(uri)
    if db is None:
        yield
        return
    import fcntl

    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # a few seconds at most: another process's first connection
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_store(uri: str) -> None:
    """Create (or migrate) the store once per process, under :func:`store_lock` (a no-op after the first call)."""
    if uri in _READY or _sqlite_file(uri) is None:  # a database server or MLflow server migrates its store once
        return
    from mlflow import MlflowClient

    with store_lock(uri):
        MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    _READY.add(uri)


@dataclass(frozen=True)
class StaleRun:
    run_id: str
    name: str
    owner: Owner | None  # None: opened before runs carried their owner


def stale_runs(uri: str) -> list[StaleRun]:
    """Runs of the store left RUNNING by a process that no longer runs (or by an unknown one). Call it only while
    holding the workspace (one writer at a time), so that no live command's run is among them; runs of live
    processes and of other hosts are never returned."""
    from mlflow.entities import ViewType

    ensure_store(uri)
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiments = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    found: list[StaleRun] = []
    for i in range(0, len(experiments), 100):
        token = None
        while True:
            page = client.search_runs(experiments[i : i + 100], "attributes.status = 'RUNNING'",
                                      run_view_type=ViewType.ALL, max_results=1000, page_token=token)  # fmt: skip
            for run in page:
                owner = Owner.from_tags(run.data.tags)
                if owner is None or owner.alive() is False:
                    found.append(StaleRun(run.info.run_id, run.info.run_name or "", owner))
            token = page.token
            if not token:
                break
    return found


def mark_killed(uri: str, runs: Sequence[StaleRun], why: str) -> None:
    """End ``runs`` as KILLED, tagged ``medtune.reconciled=<why>``."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    for run in runs:
        client.set_tag(run.run_id, RECONCILED_TAG, why)
        client.set_terminated(run.run_id, status="KILLED")
