"""``mlflow models serve -m models:/<name>@champion`` on the pyfunc model medtune registers (issue 19 item 7), as
README "Serving the champion" tells a user to run it: a good request is answered, bad ones get HTTP 400 and one
line of JSON, never a stack trace.

The model is the tiny trained folder of the pyfunc unit tests, logged and registered by medtune's own
:mod:`components.tracking.registry` in a SQLite store in tmp, with the ``champion`` alias on it. The server runs
with the network cut (netguard) on 127.0.0.1; every wait is bounded.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from components.tracking import TrackingSession, registry
from components.tracking.pyfunc_model import file_to_base64
from tests.integration.conftest import BIN, assert_offline, cli_env, free_port
from tests.unit.tracking.test_pyfunc_model import model_folder  # noqa: F401  (the fixture: a tiny trained folder)

pytestmark = pytest.mark.integration

NAME = "medtune-vlm"
START_TIMEOUT_S = 240  # loading torch, transformers and the model on a shared 2-core machine
REQUEST_TIMEOUT_S = 120


@pytest.fixture
def served(request: pytest.FixtureRequest, netguard: dict[str, str], tmp_path: Path) -> Iterator[tuple[str, str]]:
    """The registered champion served on 127.0.0.1; yields (base URL, a PNG as base64)."""
    folder, image = request.getfixturevalue("model_folder")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    session = TrackingSession.connect(uri, "retrain", tmp_path / "artifacts")
    run_id = session.start_run("register")
    model_uri = registry.log_model(run_id, folder, example_image=image)
    version = registry.register_version(session.client, NAME, model_uri, run_id, {"data_version": "test"})
    registry.set_alias(session.client, NAME, registry.CHAMPION, version)
    session.finish(run_id)

    port = free_port()
    cmd = [str(BIN / "mlflow"), "models", "serve", "-m", f"models:/{NAME}@{registry.CHAMPION}",
           "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]  # fmt: skip
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            cmd, env=cli_env(netguard, MLFLOW_TRACKING_URI=uri), cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"mlflow models serve exited {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(base + "/ping", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"no answer on /ping within {START_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")
            time.sleep(1)
        yield base, file_to_base64(image)
    finally:
        try:
            os.killpg(proc.pid, 15)
            proc.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, 9)


def invoke(base: str, body: str | dict[str, Any]) -> tuple[int, str]:
    data = (body if isinstance(body, str) else json.dumps(body)).encode()
    req = urllib.request.Request(base + "/invocations", data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=REQUEST_TIMEOUT_S) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


@pytest.mark.timeout(900)
def test_champion_served_answers_and_refuses_bad_requests(served: tuple[str, str], netguard: dict[str, str]) -> None:
    base, png = served
    good = {
        "dataframe_records": [
            {"task": "comprehension", "question": "What modality is this?", "image": png},
            {"task": "generation", "question": "Convert this CT slice into a T2-weighted MRI.", "image": png},
        ],
        "params": {"max_new_tokens": 4},
    }
    status, text = invoke(base, good)
    assert status == 200, text
    predictions = json.loads(text)["predictions"]
    assert [sorted(p) for p in predictions] == [["answer", "image"], ["answer", "image"]]
    assert predictions[0]["image"] == "" and predictions[1]["image"].startswith("iVBORw0KGgo")  # a base64 PNG

    bad = {
        "non-image": {"dataframe_records": [{"task": "comprehension", "question": "q", "image": "bm90IGFuIGltYWdl"}]},
        "wrong columns": {"dataframe_records": [{"prompt": "q", "picture": png}]},
        "garbage JSON": '{"dataframe_records": [{"task": ',
    }
    for what, body in bad.items():
        status, text = invoke(base, body)
        assert status == 400, (what, text)
        assert "\n" not in text.strip() and "Traceback" not in text, (what, text)
        error = json.loads(text)
        assert "stack_trace" not in error and error["message"], (what, error)
    assert_offline(netguard)
