"""Flower deployment on loopback: a real SuperLink and real SuperNodes as separate processes, medtune's Flower app
(``infra/flower``) submitted with ``flwr run`` (issue 7 acceptance).

    .venv/bin/pytest tests/integration/test_federated.py

Insecure mode (no TLS) is used because every process binds 127.0.0.1 inside the test; a real deployment uses
certificates (infra/flower/README.md). Every process runs under the netguard (non-loopback connections refused)
in its own session and is killed in teardown; every wait is bounded. The task is ``mlp`` (synthetic clusters, a
tiny MLP), so a round costs about the start of a ClientApp process.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from safetensors.numpy import load_file

from components.federated.settings import FedSettings
from tests.integration.conftest import BIN, assert_offline, cli_env, free_port

pytestmark = pytest.mark.integration

APP = Path(__file__).resolve().parents[2] / "infra" / "flower"
CONNECTION = "medtune-test"


class Cluster:
    """A SuperLink and SuperNodes on 127.0.0.1, each in its own process group."""

    def __init__(self, root: Path, env: dict[str, str]):
        self.root, self.env = root, env
        self.port = free_port()
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        home = Path(env["FLWR_HOME"])
        home.mkdir(parents=True, exist_ok=True)
        (home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
            f'address = "127.0.0.1:{self.port}"\ninsecure = true\n'
        )

    def _start(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        log = open(self.root / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process in stop()
        proc = subprocess.Popen(args, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs[name] = proc
        return proc

    def superlink(self) -> None:
        self._start(
            "superlink",
            [str(BIN / "flower-superlink"), "--insecure", "--port", str(self.port),
             "--disable-runtime-dependency-installation"],
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.procs["superlink"].poll() is None, self.log("superlink")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.3)
        raise AssertionError("the SuperLink did not listen within 60 s")

    def supernode(self, pid: int, num: int) -> None:
        self._start(
            f"node{pid}",
            [str(BIN / "flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{self.port}",
             "--port", str(free_port()), "--node-config", f"partition-id={pid} num-partitions={num}",
             "--max-wait-time", "60"],
        )  # fmt: skip

    def site_node(self, name: str, data: Path, site: str, *, warm: bool = False) -> None:
        """A SuperNode that brings its own records file and names itself (``--node-config 'data=... site=...'``),
        started with medtune's launcher; ``warm``: one ClientApp process for all its messages."""
        self._start(
            name,
            [str(BIN / "python"), "-m", "components.federated.launch", "supernode", *(["--warm"] if warm else []),
             "--insecure", "--superlink", f"127.0.0.1:{self.port}", "--port", str(free_port()),
             "--node-config", f'data="{data}" site="{site}"', "--max-wait-time", "60"],
        )  # fmt: skip

    def log(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def kill(self, name: str) -> None:
        proc = self.procs[name]
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)

    def kill_on(self, name: str, line: str, within: float = 180) -> tuple[threading.Thread, dict[str, float]]:
        """SIGKILL node ``name`` as soon as ``line`` appears in its log (a started watcher thread, and a dict that
        holds ``"at"``, the monotonic time of the kill, once it happened)."""
        killed: dict[str, float] = {}

        def watch() -> None:
            deadline = time.monotonic() + within
            while time.monotonic() < deadline:
                if line in self.log(name):
                    self.kill(name)
                    killed["at"] = time.monotonic()
                    return
                time.sleep(0.2)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        return watcher, killed

    def run(self, out: Path, timeout: float, **config: Any) -> subprocess.CompletedProcess[str]:
        args = [str(BIN / "flwr"), "run", str(APP), CONNECTION, "--stream"]
        for item in FedSettings(**config, out_dir=str(out)).to_flwr_args():
            args += ["-c", item]
        return subprocess.run(args, env=self.env, capture_output=True, text=True, timeout=timeout)

    def stop(self) -> None:
        # SIGKILL at once: the test is over and its state is throwaway; a SIGTERM'd SuperLink or SuperNode took
        # seconds each to shut down gracefully
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # each process's group: a node's ClientApp/SuperExec children too
        for proc in self.procs.values():
            proc.wait(timeout=30)


@pytest.fixture
def cluster(tmp_path: Path, netguard: dict[str, str]) -> Iterator[Cluster]:
    env = cli_env(
        netguard,
        FLWR_HOME=str(tmp_path / "flwr"),
        FLWR_TELEMETRY_ENABLED="0",
        FLWR_DISABLE_UPDATE_CHECK="1",
        FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
        RAY_USAGE_STATS_ENABLED="0",
        OMP_NUM_THREADS="1",
    )
    c = Cluster(tmp_path, env)
    try:
        yield c
    finally:
        c.stop()
    assert_offline(netguard)


SETTINGS: dict[str, Any] = {
    "method": "slora",
    "rounds_sparse": 1,
    "rounds_lora": 1,
    "density": 0.25,
    "rank": 4,
    "local_steps": 10,
    "lr": 0.01,
    "min_sites": 2,
    "round_timeout": 90.0,
    "node_wait_timeout": 60.0,
    "task": "mlp",
    "task_args": {"alpha": 1.0},
}


def _history(out: Path, result: subprocess.CompletedProcess[str], cluster: Cluster) -> dict[str, Any]:
    where = f"flwr run exited {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-2000:]}"
    assert (out / "history.json").is_file(), where + "\nsuperlink log:\n" + cluster.log("superlink")
    history = json.loads((out / "history.json").read_text())
    assert history["status"] == "finished", history["error"] + "\n" + where
    return history


def test_slora_on_superlink_and_two_supernodes(cluster: Cluster, tmp_path: Path) -> None:
    cluster.superlink()
    for pid in range(2):
        cluster.supernode(pid, 2)
    out = tmp_path / "out"
    history = _history(out, cluster.run(out, timeout=240, **SETTINGS), cluster)

    rounds = history["rounds"]
    assert [r["phase"] for r in rounds] == ["sparse", "lora"]
    for r in rounds:
        assert sorted(r["accepted"]) == ["site-0", "site-1"] and r["rejected"] == {}
    # only the masked values travel in the sparse round: 25% of the two hidden matrices plus the dense head
    mlp = {"net.0.weight": 32 * 16, "net.2.weight": 32 * 32}
    head = 4 * 32 + 4
    sparse_up = sum(round(0.25 * n) for n in mlp.values()) + head
    assert rounds[0]["bytes_up"] == 2 * 4 * sparse_up
    lora_up = 4 * (16 + 32) + 4 * (32 + 32) + head  # A (r x in) + B (out x r) per matrix
    assert rounds[1]["bytes_up"] == 2 * 4 * lora_up
    assert sorted(history["final"]) == ["site-0", "site-1"]
    assert all(0.0 <= m["accuracy"] <= 1.0 for m in history["final"].values())
    deltas = load_file(str(out / "final.safetensors"))
    assert set(deltas) == {*mlp, "out.weight", "out.bias"}
    assert (out / "rounds.png").stat().st_size > 0


@pytest.mark.slow
def test_run_survives_a_supernode_killed_mid_round(cluster: Cluster, tmp_path: Path) -> None:
    cluster.superlink()
    for pid in range(3):
        cluster.supernode(pid, 3)
    out = tmp_path / "out"
    # node 2 dies once it has received the first training message
    watcher, killed = cluster.kill_on("node2", "Receiving: train message")
    # Flower's SuperLink declares a node dead after two missed 30 s heartbeats; a 45 s round timeout ends the round
    # sooner when the healthy sites have answered (the dead one then counts as missing rather than as an error)
    result = cluster.run(out, timeout=300, **{**SETTINGS, "round_timeout": 45.0})
    watcher.join(timeout=5)
    assert "at" in killed, "node 2 never received a training message"
    history = _history(out, result, cluster)

    first, second = history["rounds"]
    assert len(first["accepted"]) == 2 and "site-2" not in first["accepted"]
    assert first["missing"] + len(first["rejected"]) == 1, first  # the dead node: an error reply or no reply
    assert len(second["accepted"]) == 2
    assert sorted(history["final"]) == ["site-0", "site-1"]
