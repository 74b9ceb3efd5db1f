"""Data Docs in a real browser with the network cut (issue 18): the pages are styled and scripted from the files
under ``<docs>/static/vendor`` and request nothing from the network.

Headless Chromium (Debian's ``chromium``) opens the pages with its proxy set to a dead port on 127.0.0.1, so any
http(s) fetch fails, and writes a NetLog of every request it tried. When ``chromium`` is missing the set-up
installs it with apt-get (as root, or with password-less sudo) and skips with the reason only when that is
impossible. Each browser run is bounded by a timeout.

What would fail with GE's CDN links: the index's list of runs is drawn by bootstrap-table (no row without it),
Bootstrap's primary buttons are painted in its blue (#007bff), the page differs from the same HTML without the
vendor folder, and the NetLog shows the page's own requests to the CDNs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from components.validation import validate_dataset
from tests.unit.validation.factory import make_dataset, write_records

pytestmark = pytest.mark.integration

BROWSER_TIMEOUT_S = 120
WINDOW = (1280, 900)
BOOTSTRAP_PRIMARY = (0, 123, 255)  # .btn-primary background in Bootstrap 4


def _run(cmd: list[str], timeout: float, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)


def _privileged() -> list[str] | None:
    """How to run apt-get: directly as root, through password-less sudo, or not at all."""
    if os.geteuid() == 0:
        return []
    if shutil.which("sudo") and _run(["sudo", "-n", "true"], timeout=10).returncode == 0:
        return ["sudo", "-n"]
    return None


@pytest.fixture(scope="module")
def chromium() -> str:
    found = shutil.which("chromium")
    if found:
        return found
    prefix = _privileged()
    if prefix is None or shutil.which("apt-get") is None:
        pytest.skip("chromium is not installed and cannot be (no apt-get, or neither root nor password-less sudo)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [*prefix, "apt-get", "install", "-y", "-q", "--no-install-recommends", "chromium"]
    if _run(install, timeout=900, env=env).returncode != 0:
        _run([*prefix, "apt-get", "update", "-q"], timeout=600, env=env)
        result = _run(install, timeout=900, env=env)
        if result.returncode != 0:
            pytest.skip(f"apt-get install chromium failed: {result.stderr.strip()[-300:]}")
    found = shutil.which("chromium")
    if found is None:
        pytest.skip("apt-get installed chromium but no chromium command was found")
    return found


class Browser:
    """Headless Chromium with the network cut: every http(s) request goes to a proxy on a dead port."""

    def __init__(self, binary: str, work: Path) -> None:
        self.binary, self.work, self.runs = binary, work, 0

    def _open(self, page: Path, *action: str) -> tuple[subprocess.CompletedProcess[str], list[str]]:
        """Run the browser on ``page`` once; returns the process and the URLs the page itself requested."""
        self.runs += 1
        profile, netlog = self.work / f"profile-{self.runs}", self.work / f"netlog-{self.runs}.json"
        cmd = [
            self.binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={profile}", "--proxy-server=127.0.0.1:9", f"--log-net-log={netlog}",
            f"--window-size={WINDOW[0]},{WINDOW[1]}", "--virtual-time-budget=5000", *action, page.as_uri(),
        ]  # fmt: skip
        result = _run(cmd, timeout=BROWSER_TIMEOUT_S)
        assert result.returncode == 0, result.stderr[-2000:]
        return result, page_requests(netlog)

    def screenshot(self, page: Path) -> tuple[np.ndarray, list[str]]:
        png = self.work / f"shot-{self.runs + 1}.png"
        _, requests = self._open(page, f"--screenshot={png}")
        return np.asarray(Image.open(png).convert("RGB"), dtype=np.int16), requests

    def dom(self, page: Path) -> str:
        result, _ = self._open(page, "--dump-dom")
        return result.stdout


def page_requests(netlog: Path) -> list[str]:
    """URLs the page asked for (Chromium's own background requests have another initiator)."""
    events = json.loads(netlog.read_text(encoding="utf-8"))["events"]
    urls = {
        e["params"]["url"]
        for e in events
        if isinstance(e.get("params"), dict)
        and "url" in e["params"]
        and (e["params"].get("initiator") == "null" or str(e["params"].get("initiator", "")).startswith("file:"))
    }
    return sorted(url for url in urls if not url.startswith(("file:", "data:")))


@pytest.fixture(scope="module")
def docs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A failing run's Data Docs; returns the docs folder and the run's page."""
    tmp = tmp_path_factory.mktemp("docs")
    records = make_dataset(tmp / "ds")
    records[6]["modality"] = "PET"
    write_records(tmp / "ds", records)
    report = validate_dataset(tmp / "ds", docs_dir=tmp / "docs")
    assert report.docs_page is not None
    return tmp / "docs", Path(report.docs_page)


@pytest.fixture
def browser(chromium: str, tmp_path: Path) -> Browser:
    return Browser(chromium, tmp_path)


def without_vendor(docs: Path, tmp_path: Path) -> Path:
    """A copy of the docs folder without its vendor folder: what a browser shows when the assets cannot be had."""
    bare = tmp_path / "bare"
    shutil.copytree(docs, bare)
    shutil.rmtree(bare / "static" / "vendor", ignore_errors=True)
    return bare


def near(image: np.ndarray, rgb: tuple[int, int, int], tolerance: int = 12) -> int:
    return int((np.abs(image - np.array(rgb)).max(axis=2) <= tolerance).sum())


def test_index_lists_the_run_from_local_scripts(docs: tuple[Path, Path], browser: Browser) -> None:
    root, page = docs
    dom = browser.dom(root / "index.html")
    run = page.relative_to(root).as_posix()
    assert f'data-href="{run}"' in dom  # bootstrap-table drew the row (rowAttributes)
    assert "Showing 1 to 1 of 1 rows" in dom


def test_pages_are_styled_without_the_network(docs: tuple[Path, Path], browser: Browser, tmp_path: Path) -> None:
    root, page = docs
    bare_root = without_vendor(root, tmp_path)
    for shown in (page.relative_to(root), Path("index.html")):
        styled, requests = browser.screenshot(root / shown)
        assert requests == [], shown  # nothing asked of the network
        bare, _ = browser.screenshot(bare_root / shown)
        changed = float((np.abs(styled - bare).max(axis=2) > 24).mean())
        print(f"{shown}: {changed:.1%} of the pixels differ, {near(styled, BOOTSTRAP_PRIMARY)} in Bootstrap blue")
        assert changed > 0.05, f"{shown}: only {changed:.1%} of the pixels differ from the page without its assets"
        assert near(bare, BOOTSTRAP_PRIMARY) < 200, shown
    # Bootstrap's primary buttons on the run's page ("Show All", "Failed Only")
    styled, _ = browser.screenshot(page)
    assert near(styled, BOOTSTRAP_PRIMARY) > 2000
