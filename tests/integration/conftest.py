"""Integration tier: real CLIs as a user runs them, in temporary workspaces, with the network cut off.

Every Python process the tests start (medtune, dvc, the stage commands DVC runs, Prefect's temporary server,
the MLflow server) loads a ``sitecustomize`` that refuses and records any connection or name lookup that is
not loopback; :func:`assert_offline` fails the test if one was attempted.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

BIN = Path(sys.executable).parent
MEDTUNE = str(BIN / "medtune")

GUARD = """
import os, sys
_LOG = os.environ.get("MEDTUNE_NETGUARD_LOG")
_OK = ("127.", "::1", "localhost", "0.0.0.0", "::")
def _loopback(host):
    if host is None or host == "":
        return True
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    return str(host).startswith(_OK)
def _hook(event, args):
    if event == "socket.getaddrinfo":
        host = args[0]
    elif event == "socket.connect":
        addr = args[1]
        if not isinstance(addr, tuple):
            return  # unix socket
        host = addr[0]
    else:
        return
    if not _loopback(host):
        if _LOG:
            with open(_LOG, "a") as fh:
                fh.write(f"{os.getpid()} {event} {host} {' '.join(sys.argv)[:200]}\\n")
        raise OSError(f"network disabled in medtune tests: {host}")
if _LOG:
    sys.addaudithook(_hook)
"""


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


@pytest.fixture(scope="session")
def netguard(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("netguard")
    (folder / "sitecustomize.py").write_text(GUARD)
    log = folder / "attempts.log"
    log.touch()
    # one cache for every CLI process of the session: the burned-in text detector's boxes of pydicom's sample files
    # (components/data/burned_in.py) are computed once, not in every fresh workspace
    return {"PYTHONPATH": str(folder), "MEDTUNE_NETGUARD_LOG": str(log), "XDG_CACHE_HOME": str(folder / "cache")}


def assert_offline(netguard: dict[str, str]) -> None:
    attempts = Path(netguard["MEDTUNE_NETGUARD_LOG"]).read_text()
    assert attempts == "", f"non-loopback network attempts:\n{attempts}"


def cli_env(netguard: dict[str, str], **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MEDTUNE_", "PREFECT_", "MLFLOW_"))}
    env.update(netguard)
    env["PATH"] = str(BIN) + os.pathsep + env.get("PATH", "")
    env["COLUMNS"] = "200"
    env.update(extra)
    return env


def medtune(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 600) -> Result:
    proc = subprocess.run([MEDTUNE, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    return Result(proc.returncode, proc.stdout, proc.stderr)


def git_commit_all(ws: Path) -> None:
    subprocess.run(["git", "add", "-A"], cwd=ws, check=True, capture_output=True)
    subprocess.run(
        ["git", "-c", "user.email=t@example.org", "-c", "user.name=t", "commit", "-qm", "ws"],
        cwd=ws,
        check=True,
        capture_output=True,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


CREATE_MLFLOW_STORE = """
import sys
from components.tracking.runs import ensure_store
ensure_store(sys.argv[1])
"""


@pytest.fixture(scope="session")
def empty_stores(tmp_path_factory: pytest.TempPathFactory, netguard: dict[str, str]) -> Path:
    """A state folder holding only Prefect's and MLflow's empty SQLite databases, created once per session by the
    libraries' own migrations (``prefect server database upgrade``; medtune's :func:`ensure_store`, which runs
    MLflow's): :func:`make_workspace` copies them into every workspace, instead of each workspace's first command
    migrating both from scratch (3-6 s of CPU per workspace, 25-30 s of wall time on the shared 2-core machine at a
    load of 10: SQLite's many small schema transactions). The first start in a bare state
    folder is still tested where it is the point: the concurrency test's fixture (two runs racing on the creation of
    the stores) and every test that calls ``medtune init`` itself."""
    root = tmp_path_factory.mktemp("empty-stores")
    state, home = root / "state", root / "home"
    home.mkdir()
    env = cli_env(netguard, HOME=str(home), PREFECT_HOME=str(state / "prefect"),
                  PREFECT_SERVER_MEMO_STORE_PATH=str(state / "prefect" / "memo_store.toml"))  # fmt: skip
    (state / "prefect").mkdir(parents=True)
    mlflow_uri = f"sqlite:///{state / 'mlflow' / 'mlflow.db'}"
    for args in ([str(BIN / "prefect"), "server", "database", "upgrade", "-y"],
                 [sys.executable, "-c", CREATE_MLFLOW_STORE, mlflow_uri]):  # fmt: skip
        r = subprocess.run(args, cwd=root, env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
    assert (state / "prefect" / "prefect.db").is_file() and (state / "mlflow" / "mlflow.db").is_file()
    assert sorted(p.relative_to(home) for p in home.rglob("*")) == []
    return state


def copy_empty_stores(stores: Path, ws: Path) -> None:
    """The session's empty stores into ``ws/.medtune``, as the first command in ``ws`` would have created them:
    MLflow's ``Default`` experiment (which medtune does not use) points at ``<cwd>/mlruns/0`` of the creating
    process, so at the workspace's."""
    import sqlite3

    state = ws / ".medtune"
    # the temporary server's database, the one of `medtune schedule` and `medtune watch` (pipelines/schedule.py:
    # <state>/prefect/server), MLflow's store
    copies = {"prefect/prefect.db": "prefect/prefect.db", "prefect/server/prefect.db": "prefect/prefect.db",
              "mlflow/mlflow.db": "mlflow/mlflow.db"}  # fmt: skip
    for target, source in copies.items():
        (state / target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(stores / source, state / target)
    with contextlib.closing(sqlite3.connect(state / "mlflow" / "mlflow.db")) as db, db:
        db.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0", (str(ws / "mlruns" / "0"),))


@pytest.fixture
def make_workspace(tmp_path: Path, netguard: dict[str, str], empty_stores: Path) -> Any:
    def make(name: str = "ws") -> Path:
        ws = tmp_path / name
        r = medtune(["init", str(ws)], tmp_path, cli_env(netguard))
        assert r.returncode == 0, r.output
        git_commit_all(ws)
        copy_empty_stores(empty_stores, ws)
        return ws

    return make


class MlflowUI:
    def __init__(self, base: str, proc: subprocess.Popen[bytes]):
        self.base = base
        self.proc = proc

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.base + path, timeout=30) as r:
            return json.loads(r.read())

    def post(self, path: str, body: dict[str, Any]) -> Any:
        req = urllib.request.Request(
            self.base + path,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())


@pytest.fixture
def serve_ui(netguard: dict[str, str]) -> Iterator[Any]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(ws: Path) -> MlflowUI:
        port = free_port()
        proc = subprocess.Popen(
            [MEDTUNE, "ui", "--port", str(port)],
            cwd=ws,
            env=cli_env(netguard),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        procs.append(proc)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"medtune ui exited with {proc.returncode}")
            try:
                with urllib.request.urlopen(base + "/health", timeout=5) as r:
                    if r.status == 200:
                        return MlflowUI(base, proc)
            except OSError:
                time.sleep(0.5)
        raise AssertionError("medtune ui did not answer /health within 90 s")

    yield start
    for proc in procs:
        try:
            os.killpg(proc.pid, 15)
            proc.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, 9)
