"""MLflow's users and grants for medtune's production stack (issue 19): only the promotion identity may move an
alias (``champion``) on the registered model, so the UI's "Promote model" and alias editing cannot skip the gates.

Run once by the stack (infra/compose.yaml: the one-shot ``mlflow-auth`` service, after the MLflow server with its
basic-auth app is healthy); idempotent, so running it again after a password change in ``stack.env`` applies it::

    MLFLOW_TRACKING_URI=http://mlflow:5000 \\
    MLFLOW_TRACKING_USERNAME=admin MLFLOW_TRACKING_PASSWORD=... \\      # the admin (MLFLOW_AUTH_ADMIN_*)
    MEDTUNE_MLFLOW_USERNAME=medtune MEDTUNE_MLFLOW_PASSWORD=... \\      # the identity the Prefect worker runs as
    MLFLOW_READER_USERNAME=viewer MLFLOW_READER_PASSWORD=... \\         # optional: a shared read-only UI account
    python infra/mlflow/bootstrap_auth.py --model medtune-vlm --experiment retrain

As the admin it (1) creates the promotion identity, or sets its password; (2) creates the registered model and the
experiment when missing, so no one else creates them first and becomes their owner (MLflow gives a creator
MANAGE), the experiment with the server's proxied artifact root; (3) grants the identity MANAGE on both: MLflow
3.17 asks ``can_update`` on the registered model for SetRegisteredModelAlias and CreateModelVersion and
``can_delete`` for DeleteRegisteredModelAlias (mlflow/server/auth/__init__.py, BEFORE_REQUEST_HANDLERS), which
only MANAGE holds; (4) creates the optional reader or sets its password, with no grant (``default_permission =
READ``, infra/mlflow/basic_auth.ini); (5) checks through the server's own resolution (users/permissions/get) that
the identity holds MANAGE on both and that no other non-admin user can update the registered model (the reader
included), and fails naming the user otherwise. One line per step; a password is never printed.
Exit 0 done, 1 refused by the server or a check failed, 2 a variable missing.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from typing import Any

MODEL_DESCRIPTION = "medtune: a medical VLM with HealthGPT task plugins"  # components/tracking/registry.py's
MAY_UPDATE = ("EDIT", "MANAGE")  # the permission levels with can_update: enough to move an alias


def _env(name: str, *, required: bool = True) -> str | None:
    value = os.environ.get(name) or None
    if value is None and required:
        raise SystemExit(f"bootstrap_auth: set {name}")
    return value


def _rest(uri: str, endpoint: str, method: str, **kwargs: Any) -> Any:
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request, verify_rest_response

    resp = verify_rest_response(http_request(get_default_host_creds(uri), endpoint, method, **kwargs), endpoint)
    return resp.json() if resp.content else {}


def ensure_user(auth: Any, username: str, password: str) -> str:
    """Create ``username`` or set its password to ``password``; returns what was done."""
    from mlflow.exceptions import MlflowException

    try:
        auth.create_user(username, password)
        return "created"
    except MlflowException as e:
        if e.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    auth.update_user_password(username, password)
    return "exists, password set"


def ensure_model(client: Any, name: str) -> str:
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name, description=MODEL_DESCRIPTION)
        return "created"
    except MlflowException as e:
        if e.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    return "exists"


def ensure_experiment(client: Any, name: str) -> tuple[str, str]:
    found = client.get_experiment_by_name(name)
    if found is not None:
        return str(found.experiment_id), "exists"
    return str(client.create_experiment(name)), "created"


def ensure_grant(auth: Any, username: str, resource_type: str, resource_id: str, level: str) -> None:
    """``username`` holds exactly ``level`` on the resource through its own grant (replaced if it held another)."""
    from mlflow.exceptions import MlflowException

    try:
        auth.grant_user_permission(username, resource_type, resource_id, level)
    except MlflowException as e:
        if e.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        auth.revoke_user_permission(username, resource_type, resource_id)
        auth.grant_user_permission(username, resource_type, resource_id, level)


def permission(auth: Any, username: str, resource_type: str, resource_id: str) -> str:
    return str(auth.get_user_permission(username, resource_type, resource_id).permission)


def bootstrap(uri: str, identity: tuple[str, str], reader: tuple[str, str] | None, model: str, experiment: str) -> int:
    from mlflow import MlflowClient
    from mlflow.server.auth.client import AuthServiceClient
    from mlflow.server.auth.routes import LIST_USERS

    auth, client = AuthServiceClient(uri), MlflowClient(tracking_uri=uri, registry_uri=uri)
    who = identity[0]
    print(f"bootstrap_auth: user {who}: {ensure_user(auth, *identity)}", flush=True)
    print(f"bootstrap_auth: registered model {model}: {ensure_model(client, model)}", flush=True)
    experiment_id, done = ensure_experiment(client, experiment)
    print(f"bootstrap_auth: experiment {experiment} ({experiment_id}): {done}", flush=True)
    ensure_grant(auth, who, "registered_model", model, "MANAGE")
    ensure_grant(auth, who, "experiment", experiment_id, "MANAGE")
    print(f"bootstrap_auth: {who}: MANAGE on registered model {model} and experiment {experiment}", flush=True)
    if reader is not None:
        print(
            f"bootstrap_auth: user {reader[0]}: {ensure_user(auth, *reader)} (no grant: default_permission)", flush=True
        )

    problems = []
    for resource_type, resource_id in (("registered_model", model), ("experiment", experiment_id)):
        held = permission(auth, who, resource_type, resource_id)
        if held != "MANAGE":
            problems.append(f"{who} holds {held} on {resource_type} {resource_id}, not MANAGE")
    users = _rest(uri, LIST_USERS, "GET").get("users", [])
    for user in users:
        if user["is_admin"] or user["username"] == who:
            continue
        held = permission(auth, user["username"], "registered_model", model)
        if held in MAY_UPDATE:
            problems.append(f"{user['username']} holds {held} on registered model {model}: it could move champion "
                            "past the gates; revoke it (AuthServiceClient.revoke_user_permission, or the admin UI) "
                            "and keep default_permission = READ")  # fmt: skip
    for line in problems:
        print(f"bootstrap_auth: error: {line}", file=sys.stderr, flush=True)
    if problems:
        return 1
    others = len([u for u in users if not u["is_admin"] and u["username"] != who])
    print(f"bootstrap_auth: checked: only {who} (and admins) may change {model}'s aliases; {others} other user(s) "
          "read it", flush=True)  # fmt: skip
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--model", default="medtune-vlm", help="registered model (medtune's registry.name)")
    parser.add_argument("--experiment", default="retrain", help="experiment (medtune's tracking.experiment)")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", message="starlette.middleware.wsgi is deprecated")  # on importing mlflow.server
    from mlflow.exceptions import MlflowException

    try:
        uri = str(_env("MLFLOW_TRACKING_URI"))
        _env("MLFLOW_TRACKING_USERNAME"), _env("MLFLOW_TRACKING_PASSWORD")  # the admin, read by MLflow's client
        identity = (str(_env("MEDTUNE_MLFLOW_USERNAME")), str(_env("MEDTUNE_MLFLOW_PASSWORD")))
        reader_name, reader_password = (
            _env("MLFLOW_READER_USERNAME", required=False),
            _env("MLFLOW_READER_PASSWORD", required=False),
        )
    except SystemExit as e:
        print(e, file=sys.stderr)
        return 2
    if (reader_name is None) != (reader_password is None):
        print("bootstrap_auth: set both MLFLOW_READER_USERNAME and MLFLOW_READER_PASSWORD, or neither", file=sys.stderr)
        return 2
    reader = (reader_name, reader_password) if reader_name and reader_password else None
    try:
        return bootstrap(uri, identity, reader, args.model, args.experiment)
    except MlflowException as e:  # the server's message names the endpoint and the reason, never a password
        print(f"bootstrap_auth: error: {e.error_code}: {e.message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
