"""The production tracking setup on one machine: `mlflow server` with a real PostgreSQL backend store and artifacts
on an S3-compatible server (moto), all on 127.0.0.1, as infra/compose.yaml runs it with MinIO.

PostgreSQL comes from Debian's packages: when ``initdb`` is missing the set-up installs ``postgresql`` with apt-get
(as root, or with password-less sudo) and skips with the reason only when that is impossible. The cluster lives in
a temporary folder on a free port and is run by the ``postgres`` user when the tests run as root (initdb refuses
root). Every server is stopped in teardown and every wait is bounded.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import BIN, assert_offline, cli_env, free_port

pytestmark = pytest.mark.integration

PG_USER = "medtune"
PG_PASSWORD = "medtune-test-password"  # a throwaway cluster on 127.0.0.1 that lives for one test
S3_KEY, S3_SECRET = "medtune-test", "medtune-test-secret-key-0123456789"
BUCKET = "mlflow-artifacts"


def _run(cmd: list[str], timeout: float = 120, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)


def _pg_bindir() -> Path | None:
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (candidate / "initdb").exists():
            return candidate
    found = shutil.which("initdb")
    return Path(found).resolve().parent if found else None


def _privileged() -> list[str] | None:
    """How to run apt-get: directly as root, through password-less sudo, or not at all."""
    if os.geteuid() == 0:
        return []
    if shutil.which("sudo") and _run(["sudo", "-n", "true"], timeout=10).returncode == 0:
        return ["sudo", "-n"]
    return None


def _ensure_postgres() -> Path:
    bindir = _pg_bindir()
    if bindir is not None:
        return bindir
    prefix = _privileged()
    if prefix is None or shutil.which("apt-get") is None:
        pytest.skip("PostgreSQL is not installed and cannot be (no apt-get, or neither root nor password-less sudo)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [*prefix, "apt-get", "install", "-y", "-q", "--no-install-recommends", "postgresql"]
    if _run(install, timeout=900, env=env).returncode != 0:
        _run([*prefix, "apt-get", "update", "-q"], timeout=600, env=env)
        result = _run(install, timeout=900, env=env)
        if result.returncode != 0:
            pytest.skip(f"apt-get install postgresql failed: {result.stderr.strip()[-300:]}")
    bindir = _pg_bindir()
    if bindir is None:
        pytest.skip("apt-get installed postgresql but no initdb was found")
    return bindir


@dataclass
class Postgres:
    port: int
    data: Path

    def url(self, database: str) -> str:
        return f"postgresql://{PG_USER}:{PG_PASSWORD}@127.0.0.1:{self.port}/{database}"

    def connect(self, database: str) -> Any:
        import psycopg2

        return psycopg2.connect(
            host="127.0.0.1", port=self.port, user=PG_USER, password=PG_PASSWORD, dbname=database, connect_timeout=10
        )


@pytest.fixture
def postgres() -> Iterator[Postgres]:
    bindir = _ensure_postgres()
    as_user: list[str] = []
    folder = Path(tempfile.mkdtemp(prefix="medtune-pg-"))  # under /tmp: reachable by the postgres user
    if os.geteuid() == 0:  # initdb refuses to run as root
        if shutil.which("runuser") is None or _run(["id", "postgres"], timeout=10).returncode != 0:
            shutil.rmtree(folder)
            pytest.skip("running as root, and there is no 'postgres' user (or runuser) to run initdb as")
        shutil.chown(folder, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    data, pwfile, port = folder / "data", folder / "pw", free_port()
    pwfile.write_text(PG_PASSWORD + "\n")
    if as_user:
        shutil.chown(pwfile, "postgres")
    ctl = [*as_user, str(bindir / "pg_ctl"), "-D", str(data)]
    started = False
    try:
        init = _run(
            [*as_user, str(bindir / "initdb"), "-D", str(data), "-U", PG_USER, "--pwfile", str(pwfile)]
            + ["--auth=scram-sha-256", "--encoding=UTF8", "--no-sync"],
            timeout=120,
        )
        assert init.returncode == 0, init.stdout + init.stderr
        options = f"-h 127.0.0.1 -p {port} -k {folder} -c fsync=off"
        start = _run([*ctl, "-o", options, "-l", str(folder / "server.log"), "-w", "-t", "60", "start"], timeout=90)
        assert start.returncode == 0, start.stdout + start.stderr + _tail(folder / "server.log")
        started = True
        yield Postgres(port, data)
    finally:
        if started:
            _run([*ctl, "-m", "fast", "-w", "-t", "30", "stop"], timeout=60)
        shutil.rmtree(folder, ignore_errors=True)


def _tail(path: Path) -> str:
    return path.read_text(errors="replace")[-2000:] if path.exists() else ""


@pytest.fixture
def s3() -> Iterator[str]:
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    boto3.client(
        "s3", endpoint_url=endpoint, aws_access_key_id=S3_KEY, aws_secret_access_key=S3_SECRET, region_name="us-east-1"
    ).create_bucket(Bucket=BUCKET)
    try:
        yield endpoint
    finally:
        server.stop()


def _get(base: str, endpoint: str, **query: str) -> Any:
    with urllib.request.urlopen(f"{base}{endpoint}?{urllib.parse.urlencode(query)}", timeout=30) as r:
        body = r.read()
    return json.loads(body) if endpoint.startswith("/api/") else body


def test_mlflow_server_on_postgres_with_s3_artifacts(postgres: Postgres, s3: str, netguard, tmp_path: Path) -> None:
    import boto3

    from components.tracking import TrackingSession
    from components.tracking.run_report import champion_data_version

    conn = postgres.connect("postgres")
    conn.autocommit = True  # CREATE DATABASE cannot run in a transaction
    conn.cursor().execute("CREATE DATABASE mlflow")
    conn.close()

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = cli_env(
        netguard,
        MLFLOW_S3_ENDPOINT_URL=s3,
        AWS_ACCESS_KEY_ID=S3_KEY,
        AWS_SECRET_ACCESS_KEY=S3_SECRET,
        AWS_DEFAULT_REGION="us-east-1",
    )
    cmd = [str(BIN / "mlflow"), "server", "--backend-store-uri", postgres.url("mlflow")]
    cmd += ["--artifacts-destination", f"s3://{BUCKET}/mlflow", "--host", "127.0.0.1", "--port", str(port)]
    log = tmp_path / "mlflow.log"
    with open(log, "wb") as out:
        server = subprocess.Popen(
            [*cmd, "--workers", "1"], env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, f"mlflow server exited with {server.returncode}:\n{_tail(log)}"
            assert time.monotonic() < deadline, f"mlflow server not healthy within 120 s:\n{_tail(log)}"
            try:
                if _get(base, "/health") == b"OK":
                    break
            except OSError:
                time.sleep(0.5)

        # medtune's own tracking code, pointed at the server as configs/production.yaml points it.
        session = TrackingSession.connect(base, "retrain")
        parent = session.start_run("retrain", tags={"medtune.flow": "retrain", "data_version": "abc123.dir"})
        with session.child(parent, "evaluate") as child:
            session.log_metrics(child, {"closed/accuracy": 0.625})
            report = tmp_path / "metrics.json"
            report.write_text(json.dumps({"closed/accuracy": 0.625}))
            session.log_artifact(child, report)
        session.finish(parent)

        client = session.client
        client.create_registered_model("medtune-vlm")
        source = client.get_run(child).info.artifact_uri
        version = client.create_model_version("medtune-vlm", source, run_id=child, tags={"data_version": "abc123.dir"})
        client.set_registered_model_alias("medtune-vlm", "champion", version.version)

        # Read everything back over the REST API.
        got = _get(base, "/api/2.0/mlflow/runs/get", run_id=child)["run"]
        assert {m["key"]: m["value"] for m in got["data"]["metrics"]} == {"closed/accuracy": 0.625}
        files = _get(base, "/api/2.0/mlflow/artifacts/list", run_id=child)["files"]
        assert [f["path"] for f in files] == ["metrics.json"]
        body = _get(base, "/get-artifact", path="metrics.json", run_uuid=child)
        assert json.loads(body) == {"closed/accuracy": 0.625}
        alias = _get(base, "/api/2.0/mlflow/registered-models/alias", name="medtune-vlm", alias="champion")
        assert alias["model_version"]["version"] == "1"
        assert {t["key"]: t["value"] for t in alias["model_version"]["tags"]} == {"data_version": "abc123.dir"}
        champion = champion_data_version(base, "medtune-vlm")
        assert champion is not None and (champion.version, champion.data_version) == ("1", "abc123.dir")
        searched = client.search_model_versions("name='medtune-vlm'")
        assert [v.version for v in searched] == ["1"]

        # The rows are in PostgreSQL and the artifact bytes in the S3 bucket.
        with postgres.connect("mlflow") as conn, conn.cursor() as cur:
            cur.execute("SELECT name, status FROM runs ORDER BY start_time")
            assert cur.fetchall() == [("retrain", "FINISHED"), ("evaluate", "FINISHED")]
            cur.execute("SELECT name, version FROM model_versions")
            assert cur.fetchall() == [("medtune-vlm", 1)]
        conn.close()
        objects = boto3.client(
            "s3", endpoint_url=s3, aws_access_key_id=S3_KEY, aws_secret_access_key=S3_SECRET, region_name="us-east-1"
        ).list_objects_v2(Bucket=BUCKET, Prefix="mlflow/")
        keys = [o["Key"] for o in objects.get("Contents", [])]
        assert any(k.endswith(f"{child}/artifacts/metrics.json") for k in keys), keys
    finally:
        try:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)
    assert_offline(netguard)
