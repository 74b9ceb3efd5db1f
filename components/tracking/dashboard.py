"""What MLflow's experiment page needs to compare retrains (issue 19 item 6): the headline metrics repeated on the
parent run, the built dataset as an MLflow dataset input, and an experiment that opens on its runs table with those
columns shown.

    from components.tracking.dashboard import log_dataset, prepare_experiment, run_metrics, runs_view_url

    prepare_experiment(client, experiment_id, metrics=("closed/accuracy", "promoted"), tags=("data_version",))
    log_dataset(client, run_id, name="vlhealth", digest=data_version, source="s3://bucket/medtune/dvc",
                profile={"num_rows": 303, "per_split": {"train": 234, "val": 42, "test": 27}})
    run_metrics(client, child_run_id, ("closed/accuracy", "open/recall"))   # {"closed/accuracy": 0.71, ...}
    runs_view_url("http://127.0.0.1:5000", experiment_id)                   # the link that shows it all

The dataset is a reference, not a copy: its digest is the DVC data version (the md5 of the built folder, as in
dvc.lock) and its source is the DVC remote that holds every version (``dvc pull`` with that version restores it).

How MLflow 3.17's UI decides what an experiment opens on (read from its JS bundle): the experiment tag
``mlflow.experimentKind`` (``custom_model_development`` / ``genai_development``) is what earlier 3.x releases and the
kind selector use; 3.17 instead follows a UI-wide "GenAI / Model training" switch kept in the browser (GenAI by
default), which the URL's ``workflowType=machine_learning`` overrides. Which columns the runs table shows is per
browser too (metrics start hidden); a *shared view* is the one server-side form: an experiment tag
``mlflow.sharedViewState.<key>`` holding the view's JSON, applied by the URL's ``viewStateShareKey=<key>``.
:func:`prepare_experiment` writes both tags; :func:`runs_view_url` is the link that uses them.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

from components.tracking.runs import metric_name

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
TRAINING_KIND = "custom_model_development"  # the UI's "Machine learning"; "genai_development" is the GenAI one
SHARED_VIEW_PREFIX = "mlflow.sharedViewState."
VIEW_KEY = "retrains"
DATASET_CONTEXT = "train"


def prepare_experiment(client: Any, experiment_id: str, *, metrics: Iterable[str], tags: Iterable[str]) -> None:
    """Tag the experiment as model training (unless someone chose a kind for it already: the UI's kind selector
    writes the same tag) and (re)write the shared view :data:`VIEW_KEY`: the runs table with the dataset, ``metrics``
    and run ``tags`` as its columns."""
    experiment = client.get_experiment(experiment_id)
    if EXPERIMENT_KIND_TAG not in (experiment.tags or {}):
        client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, TRAINING_KIND)
    view = json.dumps({"selectedColumns": view_columns(metrics, tags)})
    if (experiment.tags or {}).get(SHARED_VIEW_PREFIX + VIEW_KEY) != view:
        client.set_experiment_tag(experiment_id, SHARED_VIEW_PREFIX + VIEW_KEY, view)


def view_columns(metrics: Iterable[str], tags: Iterable[str]) -> list[str]:
    """The runs table's column ids (``attributes.`Dataset```, ``metrics.`name```, ``tags.`name```), as MLflow's UI
    names them in its view state."""
    return [
        "attributes.`Dataset`",
        *(f"metrics.`{metric_name(m)}`" for m in metrics),
        *(f"tags.`{t}`" for t in tags),
    ]


def runs_view_url(base: str, experiment_id: str) -> str:
    """The UI link that opens the experiment's runs table with the shared view's columns."""
    query = f"viewStateShareKey={VIEW_KEY}&workflowType=machine_learning"
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?{query}"


def run_metrics(client: Any, run_id: str, names: Iterable[str]) -> dict[str, float]:
    """The latest values of ``names`` (as medtune logs them: :func:`metric_name`) that the run has."""
    logged = client.get_run(run_id).data.metrics
    return {metric_name(n): float(logged[metric_name(n)]) for n in names if metric_name(n) in logged}


def dataset(name: str, digest: str, source: str, profile: Mapping[str, Any]) -> Any:
    """An ``mlflow.data`` dataset that only describes (MetaDataset): ``source`` is a local path or an ``s3://``
    URL, resolved by MLflow's own dataset-source registry; ``profile`` is shown in the UI's dataset view."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    with warnings.catch_warnings():  # a local path matches two of MLflow's local sources, which are the same class
        warnings.simplefilter("ignore", UserWarning)
        resolved = resolve_dataset_source(source)

    class ProfiledDataset(MetaDataset):  # MetaDataset keeps no profile; the UI shows one when to_dict has it
        @property
        def profile(self) -> Any:
            return dict(profile)

        def to_dict(self) -> dict[str, str]:
            return {**super().to_dict(), "profile": json.dumps(self.profile, sort_keys=True)}

    return ProfiledDataset(resolved, name=name, digest=digest)


def log_dataset(client: Any, run_id: str, *, name: str, digest: str, source: str, profile: Mapping[str, Any]) -> None:
    """``mlflow.log_input`` for one run by id (no active run): the dataset with the input context ``train``."""
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    entity = dataset(name, digest, source, profile)._to_mlflow_entity()
    client.log_inputs(run_id, datasets=[DatasetInput(entity, [InputTag(MLFLOW_DATASET_CONTEXT, DATASET_CONTEXT)])])
