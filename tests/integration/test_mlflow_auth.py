"""MLflow's basic-auth app as the production stack runs it (issue 19): a plain user cannot move ``champion``, not
through the REST API the UI's alias editor uses, not through medtune's own ``set_alias``, and cannot copy a version
into the registered model (the UI's "Promote model"); medtune's promotion identity moves it with ``medtune promote``
after the gates; the bootstrap is idempotent and fails, naming the user, once a plain user could move an alias.

A real ``mlflow server --app-name basic-auth`` on 127.0.0.1 (SQLite stores and the auth database in a temporary
folder, the committed infra/mlflow/basic_auth.ini with only its database URI changed), set up by the committed
bootstrap script (infra/mlflow/bootstrap_auth.py) exactly as compose's one-shot ``mlflow-auth`` service runs it. The
version is registered as the register stage leaves it (evidence on its run) without training: the gates read the
evidence, not the model. No password may appear in any output, log or journal. The network is cut off; every wait
is bounded; the server is stopped at the end (75 to 95 s on a 2-core machine busy with other tests).
"""

from __future__ import annotations

import base64
import configparser
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import BIN, Result, assert_offline, cli_env, free_port, medtune

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
INI = REPO / "infra" / "mlflow" / "basic_auth.ini"
BOOTSTRAP = REPO / "infra" / "mlflow" / "bootstrap_auth.py"
NAME, EXPERIMENT = "medtune-vlm", "retrain"
POLICY = """\
quality:
  min: {closed/accuracy: 0.4}
safety: {min_overall: null, require_candidate_sut: false, max_over_refusal: null}
data: {require_validation: true}
"""


@dataclass
class Server:
    base: str
    env: dict[str, str]  # what the bootstrap and the clients start from (network guard, no MLFLOW_* of the host)
    passwords: dict[str, str]  # user -> password: admin, medtune (the promotion identity), viewer (a plain user)
    log: Path

    def request(self, user: str | None, method: str, endpoint: str, body: dict[str, Any] | None = None) -> int:
        """The HTTP status of one REST call as ``user`` (None: no credentials)."""
        req = urllib.request.Request(self.base + endpoint, method=method,
                                     data=None if body is None else json.dumps(body).encode())  # fmt: skip
        req.add_header("Content-Type", "application/json")
        if user is not None:
            token = base64.b64encode(f"{user}:{self.passwords[user]}".encode()).decode()
            req.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return int(r.status)
        except urllib.error.HTTPError as e:
            return int(e.code)

    def champion(self) -> str | None:
        req = urllib.request.Request(f"{self.base}/api/2.0/mlflow/registered-models/get?name={NAME}")
        token = base64.b64encode(f"viewer:{self.passwords['viewer']}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
        with urllib.request.urlopen(req, timeout=30) as r:
            aliases = json.loads(r.read())["registered_model"].get("aliases", [])
        return next((a["version"] for a in aliases if a["alias"] == "champion"), None)

    def bootstrap(self) -> Result:
        env = {**self.env, "MLFLOW_TRACKING_URI": self.base, "MLFLOW_TRACKING_USERNAME": "admin",
               "MLFLOW_TRACKING_PASSWORD": self.passwords["admin"], "MEDTUNE_MLFLOW_USERNAME": "medtune",
               "MEDTUNE_MLFLOW_PASSWORD": self.passwords["medtune"], "MLFLOW_READER_USERNAME": "viewer",
               "MLFLOW_READER_PASSWORD": self.passwords["viewer"]}  # fmt: skip
        cmd = [sys.executable, str(BOOTSTRAP), "--model", NAME, "--experiment", EXPERIMENT]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        return Result(proc.returncode, proc.stdout, proc.stderr)

    def assert_no_password_in(self, text: str) -> None:
        for user, password in self.passwords.items():
            assert password not in text, f"{user}'s password was written out"


def _auth_ini(folder: Path) -> Path:
    """The committed ini with its database on SQLite in ``folder``; nothing else changes."""
    parser = configparser.ConfigParser()
    parser.read(INI)
    assert parser["mlflow"]["default_permission"] == "READ" and "admin_password" not in parser["mlflow"]
    parser["mlflow"]["database_uri"] = f"sqlite:///{folder / 'auth.db'}"
    path = folder / "basic_auth.ini"
    with path.open("w") as fh:
        parser.write(fh)
    return path


@pytest.fixture
def server(tmp_path: Path, netguard: dict[str, str]) -> Iterator[Server]:
    pytest.importorskip("flask_wtf", reason="MLflow's basic-auth app needs Flask-WTF (the mlflow[auth] extra)")
    folder = tmp_path / "mlflow"
    folder.mkdir()
    passwords = {user: secrets.token_urlsafe(18) for user in ("admin", "medtune", "viewer")}
    env = cli_env(netguard, MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true")
    server_env = {**env, "MLFLOW_AUTH_CONFIG_PATH": str(_auth_ini(folder)), "MLFLOW_AUTH_ADMIN_USERNAME": "admin",
                  "MLFLOW_AUTH_ADMIN_PASSWORD": passwords["admin"],
                  "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_urlsafe(24)}  # fmt: skip
    port = free_port()
    cmd = [str(BIN / "mlflow"), "server", "--app-name", "basic-auth", "--host", "127.0.0.1", "--port", str(port),
           "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}", "--serve-artifacts",
           "--artifacts-destination", (folder / "artifacts").as_uri(), "--workers", "1"]  # fmt: skip
    log = folder / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=server_env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, f"mlflow server exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"mlflow server not healthy within 90 s:\n{log.read_text()[-3000:]}"
            try:
                with urllib.request.urlopen(base + "/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        yield Server(base, env, passwords, log)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)  # uvicorn waits for idle keep-alive connections; the stores are throwaway
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


@contextlib.contextmanager
def signed_in(server: Server, user: str) -> Iterator[Any]:
    """An MlflowClient in this process with ``user``'s credentials in the environment (as the worker has them)."""
    from mlflow import MlflowClient

    keys = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
    before = {k: os.environ.get(k) for k in keys}
    os.environ.update(dict(zip(keys, (user, server.passwords[user]), strict=True)))
    try:
        yield MlflowClient(tracking_uri=server.base, registry_uri=server.base)
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_only_the_promotion_identity_moves_champion(server: Server, make_workspace: Any, netguard) -> None:
    from components.tracking import registry
    from components.tracking.promotion import Evidence

    # 1. the bootstrap: users, the model and the experiment, MANAGE for medtune, and its check
    first = server.bootstrap()
    assert first.returncode == 0, first.output
    assert "bootstrap_auth: user medtune: created" in first.stdout
    assert f"bootstrap_auth: registered model {NAME}: created" in first.stdout
    assert f"checked: only medtune (and admins) may change {NAME}'s aliases; 1 other user(s) read it" in first.stdout

    # 2. a version as the register stage leaves it with registry.promote off (evidence, lineage tag, decision
    # "skipped"), written by the promotion identity
    with signed_in(server, "medtune") as client:
        experiment = client.get_experiment_by_name(EXPERIMENT).experiment_id
        run = client.create_run(experiment)
        evidence = Evidence(metrics={"closed/accuracy": 0.5}, validation_passed=True).to_json()
        registry.log_json(client, run.info.run_id, evidence, registry.EVIDENCE_FILE)
        mv = client.create_model_version(NAME, f"{run.info.artifact_uri}/model", run_id=run.info.run_id,
                                         tags={"medtune.parent_run": run.info.run_id,
                                               "medtune.promotion.decision": "skipped"})  # fmt: skip
    assert str(mv.version) == "1"

    # 3. a plain user reads the model, and is refused the alias (the UI's alias editor, and medtune's own
    # set_alias, the promote command's last step) and a version copied into the model (the UI's "Promote model");
    # no credentials at all is a 401
    from mlflow.exceptions import MlflowException

    alias = {"name": NAME, "alias": "champion", "version": "1"}
    assert server.request("viewer", "GET", f"/api/2.0/mlflow/registered-models/get?name={NAME}") == 200
    assert server.request("viewer", "POST", "/api/2.0/mlflow/registered-models/alias", alias) == 403
    with signed_in(server, "viewer") as client, pytest.raises(MlflowException) as refused:
        registry.set_alias(client, NAME, registry.CHAMPION, "1")
    assert refused.value.error_code == "PERMISSION_DENIED"
    copy = {"name": NAME, "source": f"models:/{NAME}/1"}
    assert server.request("viewer", "POST", "/api/2.0/mlflow/model-versions/create", copy) == 403
    assert server.request(None, "POST", "/api/2.0/mlflow/registered-models/alias", alias) == 401
    assert server.champion() is None

    # 4. `medtune promote` as the promotion identity: the gates pass and champion moves
    ws = make_workspace()
    (ws / "mlflow" / "promotion.yaml").write_text(POLICY)
    as_medtune = {"MLFLOW_TRACKING_USERNAME": "medtune", "MLFLOW_TRACKING_PASSWORD": server.passwords["medtune"]}
    promote = ["promote", "--version", "1", f"tracking.uri={server.base}"]
    done = medtune(promote, ws, cli_env(netguard, **as_medtune), timeout=300)
    assert done.returncode == 0, done.output
    assert done.stdout.splitlines()[-1] == f"{NAME} version 1 promoted to champion (was none)"
    assert server.champion() == "1"

    # 5. run again (idempotent: users exist, grants re-made) after a plain user was given EDIT: its check fails,
    # naming the user, because that user could now move an alias
    with signed_in(server, "admin"):
        from mlflow.server.auth.client import AuthServiceClient

        AuthServiceClient(server.base).grant_user_permission("viewer", "registered_model", NAME, "EDIT")
    assert server.request("viewer", "POST", "/api/2.0/mlflow/registered-models/alias", alias) == 200
    again = server.bootstrap()
    assert again.returncode == 1, again.output
    assert "user medtune: exists, password set" in again.stdout and f"model {NAME}: exists" in again.stdout
    assert f"bootstrap_auth: error: viewer holds EDIT on registered model {NAME}" in again.stderr, again.output
    assert "Traceback" not in again.output

    # no password in anything written: command output, the journal, the flow logs, the server's log
    written = [first, done, again]
    state = ws / ".medtune"
    files = [p for p in state.rglob("*") if p.is_file() and p.suffix in (".jsonl", ".log", ".json", ".txt")]
    for text in [r.output for r in written] + [p.read_text(errors="replace") for p in files]:
        server.assert_no_password_in(text)
    server.assert_no_password_in(server.log.read_text(errors="replace"))
    assert_offline(netguard)
