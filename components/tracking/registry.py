"""MLflow's model registry for medtune: log the pyfunc model, register a version, read and move aliases, record
the promotion decision, mirror the promotion journal (:mod:`components.tracking.journal`). Each function is one
small side effect, so the flow can wrap each in a task with an undo (``pipelines/promote.py``: the alias move and
the decision record run in one Prefect transaction).

    client = session.client
    uri = log_model(run_id, model_dir, example_image=png)           # pyfunc from code, artifacts = the model folder
    version = register_version(client, "medtune-vlm", uri, run_id, tags={"data_version": "..."})
    set_alias(client, "medtune-vlm", CHALLENGER, version)
    before = alias_version(client, "medtune-vlm", CHAMPION)       # None when there is no champion yet
    set_alias(client, "medtune-vlm", CHAMPION, version)           # set_alias(..., None) removes the alias

Aliases, not stages (stages are deprecated since MLflow 2.9). The model is logged with explicit pip requirements
(the installed versions: inferring them spawns a subprocess and takes ~6 s) and with the repository's
``components`` package as code, so a fresh environment with those requirements loads it without medtune installed.
MLflow validates the input example on logging by loading the model and predicting once: a model that cannot answer
is never registered.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from components.tracking.promotion import Decision, Evidence

CHAMPION, CHALLENGER = "champion", "challenger"
MODEL_NAME = "model"  # the logged model's name in its run
EVIDENCE_FILE = "promotion/evidence.json"
MODEL_INFO_FILE = "promotion/trained.json"  # the model folder's trained.json (adapter, ranks, stages) for the card
DECISION_FILE = "promotion/decision.json"
CARD_FILE = "model_card.md"
DECISIONS_DIR = "decisions"  # the journal's mirror on the candidate's run: decisions/<decision id>.json
#: Tags on the retrain parent run that the report page reads (issue 9's interface between its two halves).
DECISION_TAGS = (
    "medtune.promotion.decision",
    "medtune.promotion.failed_gates",
    "medtune.registered_model",
    "medtune.model_version",
)
#: What the pyfunc model needs at load time (distribution names); pinned to the installed versions.
REQUIREMENTS = ("mlflow", "torch", "transformers", "peft", "safetensors", "tokenizers", "pillow", "numpy", "pandas",
                "pyyaml", "pydantic")  # fmt: skip


def pip_requirements() -> list[str]:
    """``name==version`` of :data:`REQUIREMENTS` as installed, without local labels (``2.13.0+cpu`` -> ``2.13.0``)."""
    return [f"{name}=={metadata.version(name).split('+', 1)[0]}" for name in REQUIREMENTS]


def _components_dir() -> Path:
    return Path(__file__).resolve().parent.parent


def log_model(
    run_id: str, model_dir: str | Path, *, example_image: str | Path, blob_store: str | Path | None = None
) -> str:
    """Log the model folder as the pyfunc model of run ``run_id``; return its ``models:/m-...`` URI.

    ``example_image`` (a PNG) makes the input example (one question, one image to generate from). ``blob_store``:
    on a local artifact store, the weights MLflow just copied become links to that store's blobs, so the registered
    model bundles the base without a second copy on disk (:mod:`components.blobs`, issue 20 item 4)."""
    import mlflow

    from components.tracking import pyfunc_entry, pyfunc_model

    folder = Path(model_dir)
    if not (folder / "trained.json").is_file():
        raise FileNotFoundError(f"{folder} holds no trained.json: not a trained model folder (save_trained)")
    if blob_store is not None and folder.resolve().is_relative_to(Path(blob_store).resolve().parent):
        from components.blobs import intern

        intern(folder, blob_store)  # medtune's own work folder (never a user's): its weights become blobs too
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(
            name=MODEL_NAME,
            python_model=str(Path(pyfunc_entry.__file__).resolve()),
            artifacts={pyfunc_model.ARTIFACT: str(folder.resolve())},
            code_paths=[str(_components_dir())],
            signature=pyfunc_model.signature(),
            input_example=pyfunc_model.input_example(pyfunc_model.file_to_base64(example_image)),
            pip_requirements=pip_requirements(),
        )
    if blob_store is not None:
        from components.blobs import intern
        from components.tracking.export import local_path

        location = local_path(str(mlflow.get_logged_model(info.model_id).artifact_location))
        if location is not None and location.is_dir():
            intern(location, blob_store)
    return str(info.model_uri)


def register_version(client: Any, name: str, model_uri: str, run_id: str, tags: Mapping[str, str]) -> str:
    """A new version of registered model ``name`` (created if missing) from a logged model; returns its number."""
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name, description="medtune: a medical VLM with HealthGPT task plugins")
    except MlflowException as e:
        if e.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    import mlflow

    # register_model (not create_model_version) links the version to MLflow 3's LoggedModel (models:/m-...)
    version = mlflow.register_model(model_uri, name, tags=dict(tags), await_registration_for=60)
    if str(version.run_id or "") not in ("", run_id):
        raise RuntimeError(f"{model_uri} was logged from run {version.run_id}, expected {run_id}")
    return str(version.version)


def alias_version(client: Any, name: str, alias: str) -> str | None:
    """The version ``alias`` points to, or None (no such alias, or no such model)."""
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException as e:
        if e.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


def set_alias(client: Any, name: str, alias: str, version: str | None) -> None:
    """Point ``alias`` at ``version``; ``None`` removes it (restoring "no champion")."""
    if version is None:
        if alias_version(client, name, alias) is not None:
            client.delete_registered_model_alias(name, alias)
    else:
        client.set_registered_model_alias(name, alias, str(version))


def connect_client(uri: str) -> Any:
    """An ``MlflowClient`` for ``uri`` (tracking and registry), for callers outside this package."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def version_run(client: Any, name: str, version: str) -> tuple[str, dict[str, str]]:
    """The run a version was logged from, and the version's tags; LookupError when there is no such version."""
    from mlflow.exceptions import MlflowException

    try:
        mv = client.get_model_version(name, str(version))
    except MlflowException as e:
        raise LookupError(f"{name!r} has no version {version} ({e.error_code})") from None
    return str(mv.run_id), dict(mv.tags or {})


def find_version(client: Any, name: str, *, parent_run: str) -> str:
    """The newest version whose ``medtune.parent_run`` tag (the retrain run) or own run is ``parent_run``."""
    found = [
        mv
        for mv in client.search_model_versions(f"name = '{name}'")
        if (mv.tags or {}).get("medtune.parent_run") == parent_run or mv.run_id == parent_run
    ]
    if not found:
        raise LookupError(f"no version of {name!r} comes from run {parent_run}")
    return str(max(found, key=lambda mv: int(mv.version)).version)


def versions(client: Any, name: str) -> list[tuple[str, str, dict[str, str]]]:
    """Every version of ``name`` as (version, run id, tags), oldest first; [] when there is no such model."""
    found = client.search_model_versions(f"name = '{name}'")
    return sorted(((str(mv.version), str(mv.run_id or ""), dict(mv.tags or {})) for mv in found),
                  key=lambda v: int(v[0]))  # fmt: skip


def newest_version(client: Any, name: str) -> str | None:
    """The highest version number of ``name`` (what ``medtune promote`` evaluates by default), or None."""
    found = versions(client, name)
    return found[-1][0] if found else None


def mirror_decision(client: Any, name: str, run_id: str, record: Mapping[str, Any]) -> None:
    """The journal's record of a decision in MLflow, where nothing overwrites it: a new artifact file
    ``decisions/<id>.json`` on the candidate's run and a version tag ``medtune.decision.<id>`` per decision."""
    client.log_dict(run_id, dict(record), f"{DECISIONS_DIR}/{record['id']}.json")
    client.set_model_version_tag(name, str(record["version"]), f"medtune.decision.{record['id']}", record["decision"])


def mirror_mark(client: Any, run_id: str, mark: Mapping[str, Any]) -> None:
    """The mark that closed a decision, as ``decisions/<id>.<state>.json`` beside the record."""
    state = str(mark["state"]).replace(" ", "-")
    client.log_dict(run_id, dict(mark), f"{DECISIONS_DIR}/{mark['decision']}.{state}.json")


def is_mirrored(client: Any, run_id: str, decision_id: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        listed = client.list_artifacts(run_id, DECISIONS_DIR)
    except (MlflowException, OSError):
        return False
    return any(Path(a.path).name == f"{decision_id}.json" for a in listed)


def log_json(client: Any, run_id: str, data: Any, artifact_file: str) -> None:
    client.log_dict(run_id, data, artifact_file)


def load_json(client: Any, run_id: str, artifact_file: str) -> Any:
    """A JSON artifact of a run, or None when the run has no such file."""
    from mlflow.exceptions import MlflowException

    with tempfile.TemporaryDirectory(prefix="medtune-artifact-") as tmp:
        try:
            path = client.download_artifacts(run_id, artifact_file, tmp)
        except (MlflowException, OSError):
            return None
        return json.loads(Path(path).read_text())


def load_evidence(client: Any, run_id: str) -> Evidence | None:
    """The evidence logged with a version (``promotion/evidence.json`` on its run), or None."""
    data = load_json(client, run_id, EVIDENCE_FILE)
    return None if data is None else Evidence.from_json(data)


def version_tags(evidence: Evidence) -> dict[str, str]:
    """Tags of a registered version: lineage, headline metrics and safety grades (searchable in the registry)."""
    from components.tracking.model_card import HEADLINE

    tags = {k: v for k, v in evidence.lineage.items() if v}
    if "parent_run" in tags:
        tags["medtune.parent_run"] = tags.pop("parent_run")
    tags.update({f"metric.{k}": f"{evidence.metrics[k]:.6g}" for k in HEADLINE if k in evidence.metrics})
    s = evidence.safety
    if s is not None:
        tags["safety.version"] = s.version
        tags["safety.sut"] = s.sut
        tags["safety.overall"] = str(s.overall["label"])
        tags.update({f"safety.{h}": str(g["label"]) for h, g in s.hazards.items()})
        if s.over_refusal is not None:
            tags["safety.over_refusal"] = f"{s.over_refusal:.4g}"
    if evidence.validation_passed is not None:
        tags["validation.success"] = str(evidence.validation_passed).lower()
    return tags


def decision_tags(name: str, decision: Decision) -> dict[str, str]:
    return {
        "medtune.promotion.decision": decision.decision,
        "medtune.promotion.failed_gates": ",".join(g.name for g in decision.failed),
        "medtune.registered_model": name,
        "medtune.model_version": decision.version,
    }


def run_tags(client: Any, run_id: str, keys: tuple[str, ...] | list[str]) -> dict[str, str | None]:
    """The current values of ``keys`` on a run (None: unset), to restore them after a failed write."""
    tags = client.get_run(run_id).data.tags
    return {k: tags.get(k) for k in keys}


def write_run_tags(client: Any, run_id: str, tags: Mapping[str, str | None]) -> None:
    """Set tags; a None value deletes the tag (if present)."""
    current = client.get_run(run_id).data.tags
    for key, value in tags.items():
        if value is None:
            if key in current:
                client.delete_tag(run_id, key)
        else:
            client.set_tag(run_id, key, value)


def write_version_tags(client: Any, name: str, version: str, tags: Mapping[str, str | None]) -> None:
    current = dict(client.get_model_version(name, version).tags or {})
    for key, value in tags.items():
        if value is None:
            if key in current:
                client.delete_model_version_tag(name, version, key)
        else:
            client.set_model_version_tag(name, version, key, value)
