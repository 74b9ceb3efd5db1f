"""What MLflow's experiment page needs to compare retrains (issue 19 item 6): the headline metrics repeated on the
parent run, the built dataset as an MLflow dataset input, and the experiment marked as model training.

    from components.tracking.dashboard import log_dataset, mark_training_experiment, run_metrics

    mark_training_experiment(client, experiment_id)
    log_dataset(client, run_id, name="vlhealth", digest=data_version, source="s3://bucket/medtune/dvc",
                profile={"num_records": 303, "per_split": {"train": 234, "val": 42, "test": 27}})
    run_metrics(client, child_run_id, ("closed/accuracy", "open/recall"))   # {"closed/accuracy": 0.71, ...}

The dataset is a reference, not a copy: its digest is the DVC data version (the md5 of the built folder, as in
dvc.lock) and its source is the DVC remote that holds every version (``dvc pull`` with that version restores it).

The experiment tag: MLflow 3 opens an experiment on its GenAI overview unless it is told the experiment is model
training. Up to 3.x (before the UI-wide workflow switch) the experiment tag ``mlflow.experimentKind`` decides;
MLflow 3.17's UI instead follows a UI-wide switch, kept in the browser and overridden by the URL's
``workflowType`` query parameter: :func:`runs_view_url` is the link that opens the runs table on any of them.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

from components.tracking.runs import metric_name

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
TRAINING_KIND = "custom_model_development"  # the UI's "Machine learning"; "genai_development" is the GenAI one
DATASET_CONTEXT = "train"


def mark_training_experiment(client: Any, experiment_id: str) -> None:
    """Tag the experiment as model training (what MLflow 3's UI shows as "Machine learning"), unless someone chose
    a kind for it already (the UI's kind selector writes the same tag)."""
    experiment = client.get_experiment(experiment_id)
    if EXPERIMENT_KIND_TAG not in (experiment.tags or {}):
        client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, TRAINING_KIND)


def runs_view_url(base: str, experiment_id: str) -> str:
    """The UI link that opens the experiment on its runs table (MLflow 3.17 reads ``workflowType`` from the URL)."""
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


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
