"""Where a registered (or logged) medtune model's folder is, for ``medtune export`` (issue 20, item 3).

    folder = model_folder("models:/medtune-vlm@champion", tracking_uri, scratch)   # the trained model folder
    export_trained(folder, out, "peft")                                             # components.training.export

A model URI is ``models:/<name>@<alias>``, ``models:/<name>/<version>``, ``models:/m-<id>`` (a logged model),
``runs:/<run id>/model``, or a local folder: a trained model folder (``trained.json``), a downloaded pyfunc model
(``MLmodel`` + ``artifacts/model``) or a folder holding either. On a local artifact store the logged model's own
folder is used in place (nothing is copied); elsewhere (S3, a tracking server) its files are downloaded into
``scratch``. Tests: ``.venv/bin/pytest tests/unit/tracking/test_export.py``.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import unquote, urlparse

from components.tracking.pyfunc_model import ARTIFACT

TRAINED = "trained.json"


class ModelNotFound(LookupError):
    """A model URI that names no medtune model (one line, the URI in it)."""


def trained_folder(root: Path) -> Path | None:
    """The trained model folder at or in ``root`` (itself, ``artifacts/model`` of a pyfunc model, ``model/...``)."""
    for candidate in (root, root / "artifacts" / ARTIFACT, root / ARTIFACT, root / ARTIFACT / "artifacts" / ARTIFACT):
        if (candidate / TRAINED).is_file():
            return candidate
    return None


def local_path(location: str) -> Path | None:
    """A ``file:`` URI or plain path as a local folder; None for a remote store."""
    parsed = urlparse(location)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme == "" or (len(parsed.scheme) == 1 and os.name == "nt"):
        return Path(location)
    return None


def _logged_model_id(client: object, uri: str) -> str | None:
    """The logged model id (``m-...``) a ``models:/`` or ``runs:/<run>/<name>`` URI resolves to, or None."""
    from mlflow.exceptions import MlflowException

    if uri.startswith("runs:/"):
        run_id, _, name = uri[len("runs:/") :].strip("/").partition("/")
        try:
            experiment = client.get_run(run_id).info.experiment_id  # type: ignore[attr-defined]
            found = client.search_logged_models(  # type: ignore[attr-defined]
                experiment_ids=[experiment], filter_string=f"source_run_id = '{run_id}' AND name = '{name or 'model'}'"
            )
        except MlflowException as e:
            raise ModelNotFound(f"{uri}: {str(e).splitlines()[0]}") from None
        return str(found[0].model_id) if found else None  # None: an artifact folder of the run, downloaded
    if not uri.startswith("models:/"):
        return None
    rest = uri[len("models:/") :].strip("/")
    if rest.startswith("m-") and "/" not in rest and "@" not in rest:
        return rest
    try:
        if "@" in rest:
            name, alias = rest.rsplit("@", 1)
            mv = client.get_model_version_by_alias(name, alias)  # type: ignore[attr-defined]
        elif "/" in rest:
            name, version = rest.rsplit("/", 1)
            mv = client.get_model_version(name, version)  # type: ignore[attr-defined]
        else:
            raise ModelNotFound(f"{uri}: give models:/<name>@<alias> or models:/<name>/<version>")
    except MlflowException as e:
        raise ModelNotFound(f"{uri}: {str(e).splitlines()[0]}") from None
    source = str(mv.source or "")
    model_id = getattr(mv, "model_id", None) or (source[len("models:/") :] if source.startswith("models:/m-") else None)
    return str(model_id) if model_id else None


def model_folder(uri: str, tracking_uri: str, scratch: Path) -> Path:
    """The trained model folder a model URI names (see the module docstring); :class:`ModelNotFound` otherwise."""
    local = Path(uri).expanduser()
    if "://" not in uri and ":/" not in uri:
        if not local.exists():
            raise ModelNotFound(f"{uri}: no such folder (and not a models:/ or runs:/ URI)")
        found = trained_folder(local)
        if found is None:
            raise ModelNotFound(f"{uri}: holds no trained medtune model (no {TRAINED}, no artifacts/{ARTIFACT})")
        return found
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    model_id = _logged_model_id(client, uri)
    if model_id is not None:
        try:
            location = str(client.get_logged_model(model_id).artifact_location)
        except MlflowException as e:
            raise ModelNotFound(f"{uri}: logged model {model_id}: {str(e).splitlines()[0]}") from None
        path = local_path(location)
        found = trained_folder(path) if path is not None and path.is_dir() else None
        if found is not None:
            return found  # a local artifact store: used in place
    mlflow.set_tracking_uri(tracking_uri)  # runs:/ and models:/ resolve through the global store as well
    try:
        downloaded = Path(
            mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(scratch), tracking_uri=tracking_uri)
        )
    except (MlflowException, OSError) as e:
        raise ModelNotFound(f"{uri}: {str(e).splitlines()[0]}") from None
    found = trained_folder(downloaded)
    if found is None:
        raise ModelNotFound(f"{uri}: the model holds no trained medtune model folder (artifacts/{ARTIFACT})")
    return found
