"""DVC remotes on S3: `medtune data push` / `pull` against an S3-compatible server on 127.0.0.1 (moto's
ThreadedMotoServer speaks the S3 HTTP API), with credentials only in the environment."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import assert_offline, cli_env, medtune

pytestmark = pytest.mark.integration

SECRET = "medtune-test-secret-key-0123456789"


@pytest.fixture
def s3_endpoint() -> Iterator[str]:
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="medtune-test",
        aws_secret_access_key=SECRET,
        region_name="us-east-1",
    )
    s3.create_bucket(Bucket="medtune-data")
    try:
        yield endpoint
    finally:
        server.stop()


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(folder)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_push_and_pull_through_s3(make_workspace, netguard, s3_endpoint: str) -> None:
    import boto3

    ws = make_workspace()
    env = cli_env(
        netguard,
        AWS_ACCESS_KEY_ID="medtune-test",
        AWS_SECRET_ACCESS_KEY=SECRET,
        AWS_DEFAULT_REGION="us-east-1",
        MEDTUNE_DEID_KEY="medtune-s3-test-deid-key-0123456789",
    )
    s3_cfg = [
        "dvc.remote=s3",
        "dvc.s3.bucket=medtune-data",
        "dvc.s3.prefix=team/dvc",
        f"dvc.s3.endpoint_url={s3_endpoint}",
    ]
    small = ["--config", "configs/smoke.yaml"]  # the toy-size pipeline
    run = medtune(["run", *small, *s3_cfg], ws, env)
    assert run.returncode == 0, run.output
    built = _digest(ws / "data" / "vlhealth")
    raw = _digest(ws / "data" / "raw")

    push = medtune(["data", "push", *small, *s3_cfg], ws, env)
    assert push.returncode == 0, push.output
    s3 = boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        aws_access_key_id="medtune-test",
        aws_secret_access_key=SECRET,
        region_name="us-east-1",
    )
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="medtune-data").get("Contents", [])]
    assert keys and all(k.startswith("team/dvc/files/md5/") for k in keys)

    # a new machine: no cache, no data; only git's files and the remote
    for folder in (ws / ".dvc" / "cache", ws / "data" / "vlhealth", ws / "data" / "raw"):
        shutil.rmtree(folder)
    pull = medtune(["data", "pull", *small, *s3_cfg], ws, env)
    assert pull.returncode == 0, pull.output
    assert _digest(ws / "data" / "vlhealth") == built
    assert _digest(ws / "data" / "raw") == raw

    # credentials stay in the environment: not in DVC's config, not in medtune's state or params
    for path in [ws / ".dvc" / "config", ws / ".dvc" / "config.local", ws / "params.yaml"]:
        assert SECRET not in path.read_text()
    for path in (ws / ".medtune").rglob("*"):
        if path.is_file() and path.stat().st_size < 50_000_000:
            assert SECRET.encode() not in path.read_bytes(), path
    assert_offline(netguard)
