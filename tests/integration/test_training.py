"""The training recipe as a user runs it: killed with SIGKILL mid-stage and re-run, and under torchrun with two
processes (issue 4 acceptance). Both run ``python -m components.training.recipe`` on a tiny synthetic dataset with a
tiny model (given base and VQ, so only the stages run). Run::

    .venv/bin/pytest tests/integration/test_training.py -q

Tolerances: the resumed run must equal the uninterrupted one exactly (``torch.equal``: CPU, fp32, the RNG states
are part of the checkpoint). Two processes vs one: the same global batches and the same token-normalised loss, so
the curves agree up to float summation order (DDP averages two partial gradients, one process sums one batch):
``rtol=1e-4, atol=1e-5`` per step, with adapter dropout 0 (dropout masks are drawn per rank, so with dropout the
runs would differ by design).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from components.models.tokenizer import train_tokenizer
from components.models.vlm import build_vlm
from components.models.vq import load_dataset_images, train_vq
from components.training.base import train_texts
from components.training.data import read_records
from components.training.recipe import evaluate_recipe
from tests.unit.training.conftest import TINY, TINY_VQ, make_dataset

BIN = Path(sys.executable).parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("training")
    dataset = make_dataset(root / "data", subjects=6)
    train = [r for r in read_records(dataset) if r["split"] == "train"]
    torch.manual_seed(0)
    base = build_vlm(TINY, train_tokenizer(train_texts(train), vocab_size=300)).save(root / "base")
    vq, _ = train_vq(load_dataset_images(dataset), TINY_VQ, steps=3, batch_size=8, seed=0)
    vq.save(root / "vq")
    return {"dataset": dataset, "base": base, "vq": root / "vq"}


def recipe_args(toy: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return [
        "-m", "components.training.recipe", "--dataset", str(toy["dataset"]), "--out", str(out),
        "--base-dir", str(toy["base"]), "--vq-dir", str(toy["vq"]), "--model-json", json.dumps(asdict(TINY)),
        "--rank", "4", "--generation-rank", "8", "--experts", "2", "--batch-size", "4", "--threads", "1",
        "--no-evaluate", *extra,
    ]  # fmt: skip


def trained_tensors(out: Path) -> dict[str, torch.Tensor]:
    model = out / "model"
    tensors = {f"trained/{k}": v for k, v in load_file(str(model / "trained.safetensors")).items()}
    for task in ("comprehension", "generation"):
        adapter = load_file(str(model / "adapters" / task / "adapter_model.safetensors"))
        tensors.update({f"{task}/{k}": v for k, v in adapter.items()})
    return tensors


def test_sigkill_mid_stage_then_rerun_equals_an_uninterrupted_run(toy: dict[str, Path], tmp_path: Path) -> None:
    stages = ("--stage-steps", "1=40,2=6,3=10", "--checkpoint-every", "5", "--dropout", "0.1", "--lr", "5e-3")
    straight = tmp_path / "straight"
    done = subprocess.run(
        [sys.executable, *recipe_args(toy, straight, *stages)], env=ENV, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]

    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, *recipe_args(toy, killed, *stages)], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    ckpts = killed / "stage1" / "checkpoints"
    deadline = time.monotonic() + 240
    try:
        while not (ckpts.is_dir() and any(p.name.startswith("step-") for p in ckpts.iterdir())):
            assert proc.poll() is None, (
                f"the run ended before its first checkpoint: {proc.stderr.read()[-2000:] if proc.stderr else ''}"
            )
            assert time.monotonic() < deadline, "no checkpoint appeared within 240 s"
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
    assert not (killed / "stage1" / "done.json").exists(), "killed after stage 1 finished: not a mid-stage kill"
    last = max(int(p.name.split("-")[1]) for p in ckpts.iterdir() if p.name.startswith("step-"))

    again = subprocess.run(
        [sys.executable, *recipe_args(toy, killed, *stages)], env=ENV, capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 0, again.stderr[-3000:]
    meta = json.loads((killed / "stage1" / "done.json").read_text())
    assert meta["resumed_from"] is not None and meta["resumed_from"] >= last
    straight_meta = json.loads((straight / "stage1" / "done.json").read_text())
    assert meta["losses"] == straight_meta["losses"]
    want, got = trained_tensors(straight), trained_tensors(killed)
    assert want.keys() == got.keys() and len(want) > 10
    for name, value in want.items():
        assert torch.equal(got[name], value), name


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_torchrun_two_processes_give_the_one_process_loss_curve(toy: dict[str, Path], tmp_path: Path) -> None:
    stages = ("--steps", "6", "--checkpoint-every", "0", "--dropout", "0", "--lr", "5e-3")
    one = subprocess.run(
        [sys.executable, *recipe_args(toy, tmp_path / "one", *stages)],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert one.returncode == 0, one.stderr[-3000:]
    torchrun = [
        str(BIN / "torchrun"), "--nnodes", "1", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
        "--master_port", str(free_port()),
    ]  # fmt: skip
    two = subprocess.run(
        [*torchrun, *recipe_args(toy, tmp_path / "two", *stages)], env=ENV, capture_output=True, text=True, timeout=300
    )
    assert two.returncode == 0, two.stderr[-3000:]
    for stage in (1, 2, 3):
        a = json.loads((tmp_path / "one" / f"stage{stage}" / "done.json").read_text())
        b = json.loads((tmp_path / "two" / f"stage{stage}" / "done.json").read_text())
        assert a["tasks"] == b["tasks"] and len(a["losses"]) == 6
        np.testing.assert_allclose(b["losses"], a["losses"], rtol=1e-4, atol=1e-5, err_msg=f"stage {stage}")
    want, got = trained_tensors(tmp_path / "one"), trained_tensors(tmp_path / "two")
    for name, value in want.items():
        torch.testing.assert_close(got[name], value, rtol=1e-3, atol=1e-5, msg=name)

    # the saved model evaluates from disk (what the flow's evaluate step does)
    result = evaluate_recipe(tmp_path / "one" / "model", toy["dataset"], out_dir=tmp_path / "eval")
    assert result.metrics["closed/n"] == 4 and 0.0 <= result.metrics["closed/accuracy"] <= 1.0
    assert "generation/ssim/modality_conversion/CT" in result.metrics and "generation/copy_ssim" in result.metrics
    assert (tmp_path / "eval" / "predictions.jsonl").read_text().count("\n") == 9  # 8 comprehension + 1 generation
