"""An imported HealthGPT trains and resumes exactly after SIGKILL (issue 16 acceptance "HealthGPT import"). Run::

    .venv/bin/pytest tests/integration/test_healthgpt_import.py -q

A synthetic release in HealthGPT's key layout (tiny Phi-3 + CLIP, :func:`tests.unit.models.test_healthgpt_import.
make_release`) goes through ``medtune import healthgpt`` (the real command, a subprocess); the imported folder is the
base of ``python -m components.training.recipe`` (the ``mixed`` stage: both imported plugins, both projectors, the
embeddings and the head train), killed with SIGKILL after its first checkpoint and re-run: the resumed run must
equal an uninterrupted one exactly (``torch.equal``; CPU, fp32, the RNG states are part of the checkpoint), as in
tests/integration/test_training.py.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from components.models.vlm import VLMArgs
from components.models.vq import load_dataset_images, train_vq
from tests.integration.test_training import ENV, trained_tensors
from tests.unit.models.test_healthgpt_import import COM, EXPERTS, GEN, make_release
from tests.unit.training.conftest import TINY_VQ, make_dataset

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("healthgpt-train")
    release = make_release(root / "release")
    base = root / "healthgpt-tiny"
    done = subprocess.run(
        [str(BIN / "medtune"), "import", "healthgpt", "--lm", str(release["lm"]), "--vision", str(release["vision"]),
         "--hlora", str(release["com"]), "--gen-hlora", str(release["gen"]), "--fusion", str(release["fusion"]),
         "--out", str(base)],
        env=ENV, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    dataset = make_dataset(root / "data", subjects=4)
    rgb = replace(TINY_VQ, channels=3)  # the imported CLIP reads RGB, and so does the store the VQ targets come from
    vq, _ = train_vq(load_dataset_images(dataset, channels=3), rgb, steps=3, batch_size=8, seed=0)
    vq.save(root / "vq")
    return {"dataset": dataset, "base": base, "vq": root / "vq"}


def recipe_args(toy: dict[str, Path], out: Path) -> list[str]:
    model = asdict(VLMArgs(image_size=32, channels=3, merge=1, max_positions=128))
    return [
        "-m", "components.training.recipe", "--dataset", str(toy["dataset"]), "--out", str(out),
        "--base-dir", str(toy["base"]), "--vq-dir", str(toy["vq"]), "--model-json", json.dumps(model),
        "--rank", str(COM), "--generation-rank", str(GEN), "--experts", str(EXPERTS), "--batch-size", "4",
        "--threads", "1", "--no-evaluate", "--stages", "mixed", "--stage-steps", "mixed=12", "--checkpoint-every", "3",
        "--dropout", "0.1", "--lr", "5e-3",
    ]  # fmt: skip


def test_the_imported_model_trains_and_resumes_exactly_after_sigkill(toy: dict[str, Path], tmp_path: Path) -> None:
    straight = tmp_path / "straight"  # runs beside the killed one (one thread each): the test takes one run less
    reference = subprocess.Popen(
        [sys.executable, *recipe_args(toy, straight)], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip

    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, *recipe_args(toy, killed)], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    ckpts = killed / "stagemixed" / "checkpoints"
    deadline = time.monotonic() + 120
    try:
        while not (ckpts.is_dir() and any(p.name.startswith("step-") for p in ckpts.iterdir())):
            assert proc.poll() is None, (
                f"the run ended before its first checkpoint: {proc.stderr.read()[-2000:] if proc.stderr else ''}"
            )
            assert time.monotonic() < deadline, "no checkpoint appeared within 120 s"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        if proc.stderr:
            proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "stagemixed" / "done.json").exists(), "killed after the stage finished: not a mid-stage kill"

    again = subprocess.run(
        [sys.executable, *recipe_args(toy, killed)], env=ENV, capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 0, again.stderr[-3000:]
    _, errors = reference.communicate(timeout=300)
    assert reference.returncode == 0, errors[-3000:]
    meta = json.loads((killed / "stagemixed" / "done.json").read_text())
    straight_meta = json.loads((straight / "stagemixed" / "done.json").read_text())
    assert meta["resumed_from"] is not None
    assert meta["losses"] == straight_meta["losses"] and len(meta["losses"]) == 12
    want, got = trained_tensors(straight), trained_tensors(killed)
    assert want.keys() == got.keys() and len(want) > 10
    for name, value in want.items():
        assert torch.equal(got[name], value), name

    # training started from the imported plugins and moved them
    imported = load_file(str(toy["base"] / "plugins" / "comprehension" / "adapter_model.safetensors"))
    key = next(k for k in imported if k.endswith("hlora_B"))
    trained = want[f"comprehension/{key}"]
    assert trained.shape == imported[key].shape and not torch.equal(trained, imported[key])
    assert (trained - imported[key]).abs().max() < 1.0  # a few steps from the release's weights, not from zero
