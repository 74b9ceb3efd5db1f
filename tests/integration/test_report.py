"""`medtune report RUN_ID`: the static page of one retrain, rendered by a real browser (Debian's headless Chromium).

The retrain run is logged the way the stages log it: stage child runs with metrics through medtune's
TrackingSession, a real matplotlib loss curve, the real safety stage on the comply-everything SUT (grades,
result.json and the hazard chart), and a refused promotion in the register stage's format (issue 9). The rest of a
retrain (training a model) would only make this slow; test_retrain_flow covers producing such runs.

Chromium comes from Debian's ``chromium`` package: when it is missing the set-up installs it with apt-get (as root,
or with password-less sudo) and skips with the reason only when that is impossible.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tests.integration.conftest import assert_offline, cli_env, medtune

pytestmark = pytest.mark.integration

BROWSER_FLAGS = [
    "--headless",
    "--no-sandbox",  # needed as root; the page is our own static file with a no-scripts CSP
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--dns-prefetch-disable",
    "--hide-scrollbars",
]


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.geteuid() == 0:
        prefix: list[str] = []
    elif shutil.which("sudo") and subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode == 0:
        prefix = ["sudo", "-n"]
    else:
        pytest.skip("chromium is not installed and cannot be (neither root nor password-less sudo)")
    if shutil.which("apt-get") is None:
        pytest.skip("chromium is not installed and there is no apt-get to install it")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [*prefix, "apt-get", "install", "-y", "-q", "chromium"]
    if subprocess.run(install, capture_output=True, env=env, timeout=900).returncode != 0:
        subprocess.run([*prefix, "apt-get", "update", "-q"], capture_output=True, env=env, timeout=600)
        result = subprocess.run(install, capture_output=True, text=True, env=env, timeout=900)
        if result.returncode != 0:
            pytest.skip(f"apt-get install chromium failed: {result.stderr.strip()[-300:]}")
    found = shutil.which("chromium")
    if not found:
        pytest.skip("apt-get installed chromium but no chromium binary is on PATH")
    return found


def browse(page: Path, tmp: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """Chromium, headless, on a local page with a throwaway profile; bounded."""
    flags = [*BROWSER_FLAGS, f"--user-data-dir={tmp / 'chromium-profile'}", *extra]
    env = {**os.environ, "HOME": str(tmp)}  # Chromium writes caches under $HOME
    return subprocess.run(
        [_chromium(), *flags, page.resolve().as_uri()], capture_output=True, text=True, timeout=120, env=env
    )


class _Text(HTMLParser):
    """The rendered DOM's text, tags with an id, and image sources."""

    def __init__(self) -> None:
        super().__init__()
        self.chunks: list[str] = []
        self.ids: set[str] = set()
        self.images: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if a.get("id"):
            self.ids.add(str(a["id"]))
        if tag == "img":
            self.images.append(str(a.get("src", "")))
        if tag in ("style", "title"):
            self._skip += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in ("style", "title"):
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if not self._skip and data.strip():
            self.chunks.append(data.strip())


def _loss_png(path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 3))
    ax.plot([3.2, 2.1, 1.6, 1.2345])
    ax.set_title("loss")
    fig.savefig(path, format="png")
    plt.close(fig)
    return path


def _log_retrain(ws: Path, tmp: Path) -> tuple[str, str]:
    """A retrain parent run in the workspace's store, logged as the stages do; returns (run id, safety grade)."""
    from components.config import load_config
    from components.runtime import state_paths
    from pipelines.context import Context
    from pipelines.stages import connect, safety_stage

    config = ws / "configs" / "smoke.yaml"
    ctx = Context(ws, state_paths(ws), load_config(config, ["safety.version=v1.0"]), config)
    session = connect(ctx)
    parent = session.start_run("retrain", tags={"medtune.flow": "retrain", "data_version": "0f1e2d.dir"})
    with session.child(parent, "data") as run:
        session.log_metrics(run, {"records": 270})
    with session.child(parent, "validate") as run:
        session.log_metrics(run, {"evaluated": 23, "successful": 23})
    with session.child(parent, "train") as run:
        session.log_metrics(run, {"stage3/final_loss": 1.2345})
        session.log_artifact(run, _loss_png(tmp / "loss.png"), "plots")
    with session.child(parent, "evaluate") as run:
        session.log_metrics(run, {"closed/accuracy": 0.625, "closed/accuracy/modality:CT": 0.5})
    grade = safety_stage(ctx, parent, sut="comply_all")["overall"]
    with session.child(parent, "register") as run:
        decision = {
            "decision": "refused",
            "gates": [
                {
                    "name": "min_quality",
                    "passed": True,
                    "value": 0.625,
                    "threshold": 0.5,
                    "margin": 0.125,
                    "detail": "",
                },
                {
                    "name": "safety_overall",
                    "passed": False,
                    "value": grade,
                    "threshold": "Good",
                    "margin": -2,
                    "detail": f"overall grade {grade} is below Good",
                },
            ],
            "champion_before": "1",
            "champion_after": "1",
            "version": "2",
        }
        session.log_dict(parent, decision, "promotion/decision.json")
        session.set_tags(
            parent,
            {
                "medtune.promotion.decision": "refused",
                "medtune.promotion.failed_gates": "safety_overall",
                "medtune.registered_model": "medtune-vlm",
                "medtune.model_version": "2",
            },
        )
    session.finish(parent)
    return parent, grade


def test_report_renders_in_headless_chromium(make_workspace, netguard, tmp_path: Path) -> None:
    from PIL import Image

    ws = make_workspace()
    run_id, grade = _log_retrain(ws, tmp_path)
    assert grade == "Poor"  # comply-everything under AILuminate v1.0 grading

    page = tmp_path / "report.html"
    r = medtune(["report", run_id, "-o", str(page)], ws, cli_env(netguard))
    assert r.returncode == 0, r.output
    assert f"report of retrain run {run_id}: 6 stages, refused" in r.stdout

    dom = browse(page, tmp_path, "--dump-dom")
    assert dom.returncode == 0 and "</html>" in dom.stdout, dom.stderr[-2000:]
    parsed = _Text()
    parsed.feed(dom.stdout)
    text = " | ".join(parsed.chunks)
    assert {"summary", "decision", "safety", "timeline", "metrics", "plots"} <= parsed.ids
    timeline = dom.stdout[dom.stdout.index('id="timeline"') : dom.stdout.index('id="metrics"')]
    for stage in ("data", "validate", "train", "evaluate", "safety", "register"):
        assert f">{stage}</text>" in timeline, stage  # a bar label per stage run
    assert "closed/accuracy | 0.625" in text and "stage3/final_loss | 1.234" in text
    assert "1 per-slice metrics" in text
    assert f"overall: | {grade}" in text
    assert "refused" in text and "failed gates: | safety_overall" in text
    assert "medtune-vlm version 2" in text
    assert len(parsed.images) == 2 and all(src.startswith("data:image/png;base64,") for src in parsed.images)
    captions = [c for c in parsed.chunks if c.endswith(".png")]
    assert captions == ["train: plots/loss.png", "safety: safety/hazard_grades.png"]

    # The page as drawn: the refused badge's red and the finished stages' green are on screen.
    shot = tmp_path / "report.png"
    drawn = browse(page, tmp_path, f"--screenshot={shot}", "--window-size=1200,1600")
    assert drawn.returncode == 0 and shot.exists(), drawn.stderr[-2000:]
    pixels = set(Image.open(io.BytesIO(shot.read_bytes())).convert("RGB").getdata())
    assert (0xC6, 0x28, 0x28) in pixels and (0x2E, 0x7D, 0x32) in pixels

    unknown = medtune(["report", "0" * 32], ws, cli_env(netguard))
    assert unknown.returncode == 1 and f"no run {'0' * 32!r}" in unknown.stderr
    assert_offline(netguard)
