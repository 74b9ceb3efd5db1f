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
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
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
        all_tags = dict(tags or {})
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
