"""SecAgg+ in deployment (issue 22 acceptance, without TLS/node auth yet): a SuperLink and 3 SuperNodes on loopback,
one SIGKILLed when its first SecAgg+ message arrives, ``min_sites: 2``: the run finishes on the two others, whose
masks cancel without the dead one, and the model equals plain FedAvg of the same two sites (in process, no SecAgg)
within SecAgg+'s quantization.

    .venv/bin/pytest tests/integration/test_federated_privacy.py
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import load_file

from components.federated.inprocess import run_in_process
from components.federated.settings import FedSettings
from components.federated.tasks import SiteRef, make_task
from tests.integration.test_federated import SETTINGS, Cluster, cluster  # noqa: F401, F811 (the fixture)

pytestmark = pytest.mark.integration

SECURE: dict[str, Any] = {**SETTINGS, "secure_aggregation": True, "clip_norm": 0.1, "max_examples": 400,
                          "round_timeout": 40.0}  # fmt: skip


def test_secagg_plus_survives_a_killed_supernode_and_equals_plain_fedavg(cluster: Cluster, tmp_path: Path) -> None:  # noqa: F811
    cluster.superlink()
    for pid in range(3):
        cluster.supernode(pid, 3)
    out = tmp_path / "out"
    killed: dict[str, float] = {}

    def kill_when_asked() -> None:  # node 2 dies once SecAgg+'s first (setup) message reaches it
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if "Receiving: train message" in cluster.log("node2"):
                cluster.kill("node2")
                killed["at"] = time.monotonic()
                return
            time.sleep(0.2)

    watcher = threading.Thread(target=kill_when_asked, daemon=True)
    watcher.start()
    result = cluster.run(out, timeout=420, **SECURE)
    watcher.join(timeout=5)
    assert "at" in killed, "node 2 never received a SecAgg+ message"
    history_path = out / "history.json"
    where = f"flwr run exited {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    assert history_path.is_file(), where + "\nsuperlink log:\n" + cluster.log("superlink")
    history = json.loads(history_path.read_text())
    assert history["status"] == "finished", history["error"] + "\n" + where
    assert [sorted(r["accepted"]) for r in history["rounds"]] == [["site-0", "site-1"]] * 2
    assert history["settings"]["secure_aggregation"] is True
    # plain FedAvg of the two surviving sites, same settings, in process and in the clear
    plain = FedSettings(**{**SECURE, "secure_aggregation": False})
    tasks = [make_task("mlp", {"seed": plain.seed, **plain.task_args}, SiteRef(i, 3)) for i in range(2)]
    reference = run_in_process(plain, tasks).final_deltas()
    got = load_file(str(out / "final.safetensors"))
    assert set(got) == set(reference)
    for key, want in reference.items():
        np.testing.assert_allclose(got[key], want, atol=2e-6)
