"""MLflow's runs table compares two retrains (issue 19 item 6), seen in headless Chromium: the experiment's shared
view shows each retrain's headline metrics, decision and data version in one row, and the Dataset column names
``vlhealth`` with the DVC data version as its digest.

The two retrains are :func:`tests.unit.tracking.test_dashboard.retrain_like`: :func:`pipelines.retrain.run_stages`
with stand-in stages that log what data, evaluate, safety and register log (a smoke retrain costs minutes; what
reaches the parent run is the flow's own code either way). The store is the workspace's, served by ``medtune ui``;
Chromium runs with its proxy on a dead port (loopback is never proxied), each run bounded by a timeout. The
screenshot stays in the test's tmp folder (``runs_table.png``).
"""

from __future__ import annotations

import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from components.tracking.dashboard import runs_view_url
from pipelines.retrain import DECISION_TAG, HEADLINE_METRICS
from tests.integration.conftest import assert_offline
from tests.integration.test_data_docs_offline import chromium  # noqa: F401  (the fixture: installs it if missing)
from tests.unit.tracking.test_dashboard import VERSION, context, retrain_like

pytestmark = pytest.mark.integration

BROWSER_TIMEOUT_S = 120


class Grid(HTMLParser):
    """The AG Grid of MLflow's runs table from the DOM: header column ids and each row's cells by column id."""

    def __init__(self) -> None:
        super().__init__()
        self.headers: list[str] = []
        self.rows: dict[str, dict[str, str]] = {}
        self._stack: list[tuple[str, str | None]] = []  # (tag, what it opened: "row:<index>", "cell:<col>" or None)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        opened = None
        if a.get("role") == "row" and a.get("aria-rowindex"):
            opened = f"row:{a['aria-rowindex']}"
        elif a.get("role") == "gridcell" and a.get("col-id"):
            opened = f"cell:{a['col-id']}"
        elif a.get("role") == "columnheader" and a.get("col-id"):
            self.headers.append(str(a["col-id"]))
        if tag not in ("br", "img", "input", "meta", "link", "hr"):
            self._stack.append((tag, opened))

    def handle_endtag(self, tag: str) -> None:
        while self._stack:
            if self._stack.pop()[0] == tag:
                break

    def handle_data(self, data: str) -> None:
        row = next((o[4:] for _, o in reversed(self._stack) if o and o.startswith("row:")), None)
        cell = next((o[5:] for _, o in reversed(self._stack) if o and o.startswith("cell:")), None)
        if row is not None and cell is not None and data.strip():
            cells = self.rows.setdefault(row, {})
            cells[cell] = (cells.get(cell, "") + " " + data.strip()).strip()


def open_in_chromium(binary: str, url: str, work: Path) -> str:
    """One headless Chromium run: the screenshot to ``work/runs_table.png``, the rendered DOM returned."""
    cmd = [
        binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={work / 'profile'}", "--proxy-server=127.0.0.1:9",
        "--window-size=2400,1000",  # AG Grid renders only the columns in view: wide enough for the whole view
        "--virtual-time-budget=15000", f"--screenshot={work / 'runs_table.png'}", "--dump-dom", url,
    ]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=BROWSER_TIMEOUT_S)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_runs_table_shows_headline_metrics_and_dataset_of_two_retrains(
    make_workspace, serve_ui, netguard, request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    browser = request.getfixturevalue("chromium")  # before the runs: a skip costs nothing
    ws = make_workspace()
    for name in ("MLFLOW_TRACKING_URI", "MEDTUNE_HOME"):  # the workspace's own store, as `medtune ui` serves it
        monkeypatch.delenv(name, raising=False)
    ctx = context(ws)
    retrain_like(ctx, accuracy=0.75, grade_rank=1.0, decision="promoted", reused=False)
    refs = retrain_like(ctx, accuracy=0.5, grade_rank=5.0, decision="refused", reused=True)
    ui = serve_ui(ws)

    dom = open_in_chromium(browser, runs_view_url(ui.base, refs["experiment_id"]), tmp_path)
    assert (tmp_path / "runs_table.png").stat().st_size > 10_000  # a drawn page, not a blank one
    grid = Grid()
    grid.feed(dom)
    metrics = [f"metrics.`{m}`" for m in (*HEADLINE_METRICS, "promoted")]
    tags = [f"tags.`{t}`" for t in ("data_version", DECISION_TAG)]
    assert {"attributes.`Dataset`", *metrics, *tags} <= set(grid.headers), grid.headers
    assert "Experiment not found" not in dom and "Overview" not in grid.headers

    rows = [cells for cells in grid.rows.values() if "metrics.`closed/accuracy`" in cells]
    assert len(rows) == 2, grid.rows  # the two parents; their stages' child runs stay folded under them
    seen = {tuple(row[c] for c in (*metrics, *tags)) for row in rows}
    assert seen == {
        ("0.75", "0.375", "0.25", "1", "0.125", "1", VERSION, "promoted"),
        ("0.5", "0.25", "0.25", "5", "0.125", "0", VERSION, "refused"),
    }
    for row in rows:
        assert row["attributes.`Dataset`"].startswith(f"vlhealth ({VERSION})"), row
    assert_offline(netguard)
