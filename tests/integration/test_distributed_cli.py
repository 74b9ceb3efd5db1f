"""`medtune run` as two processes on CPU (gloo), issue 20 item 2: three smoke retrains in one workspace.

1. one process (``train.distributed`` none): data, base, rank search, train, evaluate, safety, register;
2. ``medtune run --nproc 2 ... train.distributed=ddp`` (the CLI starts torchrun itself);
3. ``torchrun --nproc_per_node 2 -m pipelines.cli run ... train.distributed=fsdp`` (FSDP2);
4. ``medtune run --nproc 2`` whose rank 0 fails at the validation gate: both ranks exit 1, one line each.

Runs 2 and 3 re-use the data, the base and the rank search (no key of theirs holds a ``train`` setting) and train
the three stages again: ``train.distributed`` is part of the train stage's work-folder key. Each must leave ONE
parent MLflow run with one child per stage and ONE registered version (rank 0 alone talks to MLflow and the
registry), and per-stage losses equal to the one-process run's within ``rtol=1e-4, atol=1e-5`` (the tolerance of
tests/integration/test_training.py: the same global batches and token-normalised loss, so only the float summation
order differs; adapter dropout 0, since dropout masks are drawn per rank; one torch thread everywhere).

Run::

    .venv/bin/pytest tests/integration/test_distributed_cli.py -q
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
import torch
from safetensors.torch import load_file

from components.models.tokenizer import train_tokenizer
from components.models.vlm import build_vlm
from components.training.base import train_texts
from components.training.data import read_records
from tests.integration.conftest import BIN, Result, assert_offline, cli_env, free_port, medtune
from tests.integration.test_registry import relax_quality_floor
from tests.integration.test_retrain_flow import STAGES
from tests.integration.test_training import ENV, recipe_args, toy, trained_tensors  # noqa: F401  (toy: the fixture)
from tests.unit.training.conftest import TINY

pytestmark = pytest.mark.integration

SMOKE = ["-c", "configs/smoke.yaml", "adapter.dropout=0", "train.threads=1"]


def _client(ws: Path) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{ws / '.medtune' / 'mlflow' / 'mlflow.db'}")


def _torchrun(args: list[str], ws: Path, env: dict[str, str]) -> Result:
    cmd = [
        str(BIN / "torchrun"), "--nnodes", "1", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
        "--master_port", str(free_port()), "-m", "pipelines.cli", *args,
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ws, env=env, capture_output=True, text=True, timeout=900)
    return Result(proc.returncode, proc.stdout, proc.stderr)


def _kill_tree(proc: subprocess.Popen[Any]) -> None:
    """SIGKILL a torchrun command: its ranks first (torchrun starts each in a session of its own), then torchrun."""
    with contextlib.suppress(psutil.NoSuchProcess):
        for child in psutil.Process(proc.pid).children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess):
                child.send_signal(signal.SIGKILL)
    proc.kill()
    proc.wait(timeout=30)


def _start(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start ``cmd`` with its output in ``log`` (a file: a pipe nobody reads could fill and stall it)."""
    with log.open("wb") as out:
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)


def _finish(proc: subprocess.Popen[bytes], log: Path, timeout: float = 300) -> None:
    assert proc.wait(timeout=timeout) == 0, log.read_text(errors="replace")[-3000:]


def _losses(work_dir: str) -> dict[int, list[float]]:
    return {k: json.loads((Path(work_dir) / f"stage{k}" / "done.json").read_text())["losses"] for k in (1, 2, 3)}


@pytest.mark.slow
@pytest.mark.timeout(2400)  # three smoke retrains, two of them as two processes, on 2 shared cores
def test_two_processes_from_the_cli_train_like_one_and_log_once(make_workspace, netguard) -> None:
    ws = make_workspace()
    env = cli_env(netguard, OMP_NUM_THREADS="1")
    relax_quality_floor(ws)

    # the two-process run comes first: in a fresh workspace its rank 0 builds the data through `dvc repro`, whose
    # one-process commands must not inherit torchrun's rank variables
    ddp = medtune(["run", "--nproc", "2", *SMOKE, "train.distributed=ddp"], ws, env, timeout=900)
    assert ddp.returncode == 0, ddp.output[-6000:]
    assert "Running stage 'build'" in ddp.stdout and "base: re-used" not in ddp.stdout
    one = medtune(["run", *SMOKE], ws, env, timeout=900)
    assert one.returncode == 0, one.output
    fsdp = _torchrun(["run", *SMOKE, "train.distributed=fsdp"], ws, env)
    assert fsdp.returncode == 0, fsdp.output[-6000:]
    for result in (ddp, fsdp):  # rank 0 alone ran the flow and reported it
        assert result.stdout.count("retrain finished") == 1, result.stdout
        assert result.stdout.count("ranks: 2 processes") == 1, result.stdout
    for result in (one, fsdp):
        assert "base: re-used cached base model" in result.stdout
        assert "rank_search: " in result.stdout and "re-used)" in result.stdout

    client = _client(ws)
    assert sorted(e.name for e in client.search_experiments()) == ["Default", "retrain"]  # no rank made its own
    experiment = client.get_experiment_by_name("retrain").experiment_id
    runs = client.search_runs([experiment], max_results=200)
    parents = {r.info.run_id: r for r in runs if r.data.tags.get("medtune.flow") == "retrain"}
    assert len(parents) == 3 and all(r.info.status == "FINISHED" for r in parents.values())
    children: dict[str, dict[str, Any]] = {p: {} for p in parents}
    for r in runs:
        parent = r.data.tags.get("mlflow.parentRunId")
        if parent in children:
            assert r.data.tags["mlflow.runName"] not in children[parent], "a stage logged twice"
            children[parent][r.data.tags["mlflow.runName"]] = r
    assert all(set(c) == STAGES for c in children.values()), {p: sorted(c) for p, c in children.items()}

    versions = client.search_model_versions("name='medtune-vlm'")
    registered_by = {children_of["register"].info.run_id: p for p, children_of in children.items()}
    assert len(versions) == 3 and {v.run_id for v in versions} == set(registered_by)  # one version per command

    by_strategy = {parents[p].data.params["train.distributed"]: c["train"].data.params["train.work_dir"]
                   for p, c in children.items()}  # fmt: skip
    assert set(by_strategy) == {"none", "ddp", "fsdp"} and len(set(by_strategy.values())) == 3
    runs_of = {parents[p].data.params["train.distributed"]: c["train"].data.metrics for p, c in children.items()}
    assert {s: (m["dist/world_size"], m["dist/fsdp"]) for s, m in runs_of.items()} == {
        "none": (1.0, 0.0), "ddp": (2.0, 0.0), "fsdp": (2.0, 1.0)
    }  # fmt: skip
    want = _losses(by_strategy["none"])
    for strategy in ("ddp", "fsdp"):
        got = _losses(by_strategy[strategy])
        for stage, losses in want.items():
            np.testing.assert_allclose(got[stage], losses, rtol=1e-4, atol=1e-5, err_msg=f"{strategy} stage {stage}")

    # rank 0 fails (the validation gate refuses the data) while rank 1 waits: both exit within seconds, one line each
    refused = medtune(["run", "--nproc", "2", *SMOKE, "train.distributed=ddp", "validate.min_records=100000"], ws, env,
                      timeout=300)  # fmt: skip
    assert refused.returncode == 1, refused.output[-4000:]
    assert "stage 'validate' failed" in refused.stderr
    assert "rank 1: stopped: rank 0 failed (exit 1); its message is above" in refused.stderr
    assert "medtune run --nproc 2: failed (exit 1); the ranks' messages are above" in refused.stderr
    assert "Traceback" not in refused.output
    assert_offline(netguard)


@pytest.mark.slow
def test_a_killed_fsdp_run_resumes_from_its_checkpoint_like_an_uninterrupted_one(toy: Any, tmp_path: Path) -> None:  # noqa: F811
    """FSDP checkpoints hold the whole optimizer state by parameter name (gathered from the shards) and every
    rank's RNG: two processes SIGKILLed mid-stage and started again end where an uninterrupted run ends, bit for
    bit (the recipe command, a tiny model; dropout on, so the per-rank RNG restore counts too). Stages 2 and 3 take
    two steps: the kill lands in stage 1; they show that what follows the resumed stage is unchanged too."""
    stages = ("--stage-steps", "1=24,2=2,3=2", "--checkpoint-every", "4", "--dropout", "0.1", "--lr", "5e-3")

    def command(out: Path) -> list[str]:
        return [
            str(BIN / "torchrun"), "--nnodes", "1", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
            "--master_port", str(free_port()), *recipe_args(toy, out, *stages, "--distributed", "fsdp"),
        ]  # fmt: skip

    straight = subprocess.run(command(tmp_path / "straight"), env=ENV, capture_output=True, text=True, timeout=300)
    assert straight.returncode == 0, straight.stderr[-3000:]
    killed = tmp_path / "killed"
    proc = subprocess.Popen(command(killed), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpts = killed / "stage1" / "checkpoints"
    deadline = time.monotonic() + 240
    try:
        while not (ckpts.is_dir() and any(p.name.startswith("step-") for p in ckpts.iterdir())):
            assert proc.poll() is None, "the run ended before its first checkpoint"
            assert time.monotonic() < deadline, "no checkpoint appeared within 240 s"
            time.sleep(0.02)
    finally:
        _kill_tree(proc)
    assert not (killed / "stage1" / "done.json").exists(), "killed after stage 1 finished: not a mid-stage kill"
    state = json.loads(next(ckpts.glob("step-*/state.json")).read_text())
    assert state["sharded"] is True and state["world"] == 2

    again = subprocess.run(command(killed), env=ENV, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    meta = json.loads((killed / "stage1" / "done.json").read_text())
    assert meta["resumed_from"] is not None
    for stage in (1, 2, 3):
        a = json.loads((tmp_path / "straight" / f"stage{stage}" / "done.json").read_text())
        b = json.loads((killed / f"stage{stage}" / "done.json").read_text())
        assert a["losses"] == b["losses"], f"stage {stage}"
    want, got = trained_tensors(tmp_path / "straight"), trained_tensors(killed)
    assert want.keys() == got.keys() and len(want) > 10
    for name, value in want.items():
        assert torch.equal(got[name], value), name


@pytest.mark.slow
def test_fsdp_over_a_bf16_base_trains_like_one_process(toy: Any, tmp_path: Path) -> None:  # noqa: F811
    """A bf16 base under FSDP shards in float32 and gathers in bf16 (MixedPrecisionPolicy); one process upcasts the
    trainable tensors in place (components/training/precision.py). Same global batches, so the losses agree within
    bf16 rounding (measured with 6 steps in each of the three stages: at most 1.2e-3 apart, losses near 5). The two
    runs share nothing but their inputs: they run side by side."""
    args = replace(TINY, dtype="bfloat16")
    train = [r for r in read_records(toy["dataset"]) if r["split"] == "train"]
    torch.manual_seed(0)
    base = build_vlm(args, train_tokenizer(train_texts(train), vocab_size=300)).save(tmp_path / "base16")
    assert {v.dtype for v in load_file(str(base / "lm" / "model.safetensors")).values()} == {torch.bfloat16}
    recipe = [
        "-m", "components.training.recipe", "--dataset", str(toy["dataset"]), "--base-dir", str(base),
        "--vq-dir", str(toy["vq"]), "--model-json", json.dumps(asdict(args)), "--rank", "4", "--generation-rank", "8",
        "--experts", "2", "--batch-size", "4", "--threads", "1", "--no-evaluate", "--stages", "1,2", "--steps", "4",
        "--checkpoint-every", "0", "--dropout", "0", "--lr", "5e-3",
    ]  # fmt: skip
    torchrun = [str(BIN / "torchrun"), "--nnodes", "1", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
                "--master_port", str(free_port())]  # fmt: skip
    two = _start([*torchrun, *recipe, "--out", str(tmp_path / "two"), "--distributed", "fsdp"], tmp_path / "two.log",
                 ENV)  # fmt: skip
    try:
        one = _start([sys.executable, *recipe, "--out", str(tmp_path / "one")], tmp_path / "one.log", ENV)
        _finish(one, tmp_path / "one.log")
        _finish(two, tmp_path / "two.log")
    finally:
        if two.poll() is None:
            _kill_tree(two)
    for stage in (1, 2):
        a = json.loads((tmp_path / "one" / f"stage{stage}" / "done.json").read_text())["losses"]
        b = json.loads((tmp_path / "two" / f"stage{stage}" / "done.json").read_text())["losses"]
        np.testing.assert_allclose(b, a, rtol=1e-3, err_msg=f"stage {stage}")

    def dtypes(run: str, file: str) -> dict[str, torch.dtype]:
        return {k: v.dtype for k, v in load_file(str(tmp_path / run / file)).items()}

    # the stages' tensors leave FSDP in float32 (its master weights); the saved model in the dtypes one process saves
    assert set(dtypes("two", "stage2/final.safetensors").values()) == {torch.float32}
    assert dtypes("two", "model/trained.safetensors") == dtypes("one", "model/trained.safetensors")
