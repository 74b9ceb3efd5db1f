"""Sites own their data, and a warm SuperNode keeps what it loaded (issue 22, item 5), on loopback: two SuperNodes
started with medtune's launcher (``--warm``), each given only its own records file and its name at node start
(``--node-config 'data=... site=...'``); the run config names no data. The run trains on each site's own records
under its own name, and each SuperNode builds its task (records + base model) once for all the run's messages.

    .venv/bin/pytest tests/integration/test_federated_sites.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.integration.test_federated import SETTINGS, Cluster, _history, cluster  # noqa: F401 (the fixture)

pytestmark = pytest.mark.integration


def _records(path: Path, n: int, seed: int) -> Path:
    """A site's own records for the mlp task: 16 features, 4 classes, shifted per class."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    x = (rng.normal(size=(n, 16)) + 1.5 * np.eye(4, 16)[y]).astype(np.float32)
    np.savez(path, x=x, y=y)
    return path


def test_warm_supernodes_train_on_their_own_records_and_load_once(cluster: Cluster, tmp_path: Path) -> None:  # noqa: F811
    cluster.superlink()
    sites = {"hospital-a": _records(tmp_path / "a.npz", 50, 1), "hospital-b": _records(tmp_path / "b.npz", 80, 2)}
    for pid, (name, data) in enumerate(sites.items()):
        cluster.site_node(f"node{pid}", data, name, warm=True)
    out = tmp_path / "out"
    history = _history(out, cluster.run(out, timeout=240, **SETTINGS), cluster)
    assert history["settings"]["task_args"] == {"alpha": 1.0}  # nothing about the sites' data in the run config
    for record in history["rounds"]:
        assert sorted(record["accepted"]) == ["hospital-a", "hospital-b"]
        # each trained on its own records: 80% of its rows (the last 20% are its held-out set)
        assert record["sites"]["hospital-a"]["num_examples"] == 40
        assert record["sites"]["hospital-b"]["num_examples"] == 64
    assert sorted(history["final"]) == ["hospital-a", "hospital-b"]
    for pid, name in enumerate(sites):
        log = (tmp_path / f"node{pid}.log").read_text(errors="replace")
        # one warm process: the site's task is built once, then re-used by every later message (the name query,
        # two training rounds, the final evaluation); Flower's default starts a process, and reloads, per message
        assert log.count(f"task mlp for {name} loaded") == 1, log[-3000:]
        assert log.count(f"task mlp for {name} re-used") == 3, log[-3000:]
        assert log.count("(warm)") >= 4
        assert "acquire-task" not in log  # the worker's polls stay out of the SuperNode's log
