"""Checkpoints: optimizer, scheduler, RNG, sampler and tensors survive a round trip; writes are atomic; old ones are
pruned. Run::

    .venv/bin/pytest tests/unit/training/test_checkpoint.py -q
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from components.training.checkpoint import (
    capture_rng,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
)
from components.training.data import EpochSampler, task_for_step
from components.training.trainer import cosine_schedule


def _setup(seed: int) -> tuple[torch.nn.Linear, torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    torch.manual_seed(seed)
    layer = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(layer.parameters(), lr=0.1, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cosine_schedule(s, warmup=2, total=10))
    return layer, opt, sched


def _step(layer: torch.nn.Linear, opt: torch.optim.Optimizer, sched: torch.optim.lr_scheduler.LambdaLR) -> None:
    opt.zero_grad()
    layer(torch.randn(5, 4)).pow(2).sum().backward()
    opt.step()
    sched.step()


def test_round_trip_restores_optimizer_scheduler_rng_and_sampler(tmp_path: Path) -> None:
    layer, opt, sched = _setup(0)
    sampler = EpochSampler(7, seed=3)
    for _ in range(3):
        _step(layer, opt, sched)
        sampler.take(5)
    rng = capture_rng()
    ckpt = save_checkpoint(
        tmp_path, 3, dict(layer.named_parameters()), optimizer=opt, scheduler=sched,
        state={"samplers": {"t": sampler.state_dict()}}, rng=[rng],
    )  # fmt: skip
    # the original continues ...
    expected_draws = (torch.rand(3), np.random.rand(2), random.random(), sampler.take(9))
    for _ in range(2):
        _step(layer, opt, sched)
    # ... and a fresh process resumes from the checkpoint
    layer2, opt2, sched2 = _setup(1)
    loaded = load_checkpoint(ckpt, optimizer=opt2, scheduler=sched2)
    with torch.no_grad():
        for name, p in layer2.named_parameters():
            p.copy_(loaded.tensors[name])
    sampler2 = EpochSampler(7, seed=3)
    sampler2.load_state_dict(loaded.state["samplers"]["t"])
    restore_rng(loaded.rng[0])
    draws = (torch.rand(3), np.random.rand(2), random.random(), sampler2.take(9))
    assert torch.equal(draws[0], expected_draws[0]) and np.array_equal(draws[1], expected_draws[1])
    assert draws[2:] == expected_draws[2:]
    restore_rng(loaded.rng[0])  # same RNG as the original had after the checkpoint
    torch.rand(3), np.random.rand(2), random.random()
    for _ in range(2):
        _step(layer2, opt2, sched2)
    assert loaded.step == 3 and sched2.last_epoch == sched.last_epoch == 5
    assert sched2.get_last_lr() == sched.get_last_lr()
    for (_, a), (_, b) in zip(layer.named_parameters(), layer2.named_parameters(), strict=True):
        assert torch.equal(a, b)


def test_atomic_folders_and_pruning(tmp_path: Path) -> None:
    layer, opt, sched = _setup(0)
    (tmp_path / ".tmp-step-00000009-x").mkdir()  # a write killed half-way: never listed, cleaned on next save
    for step in (2, 4, 6):
        save_checkpoint(
            tmp_path,
            step,
            dict(layer.named_parameters()),
            optimizer=opt,
            scheduler=sched,
            state={},
            rng=[capture_rng()],
        )
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000004", "step-00000006"]
    assert latest_checkpoint(tmp_path) == tmp_path / "step-00000006"
    assert not list(tmp_path.glob(".tmp-*"))
    assert latest_checkpoint(tmp_path / "missing") is None


def test_sampler_is_a_pure_function_of_its_state() -> None:
    a = EpochSampler(5, seed=0, salt=1)
    first = a.take(12)  # crosses two epoch boundaries
    assert sorted(first[:5]) == list(range(5)) and sorted(first[5:10]) == list(range(5))
    b = EpochSampler(5, seed=0, salt=1)
    b.load_state_dict({"size": 5, "seed": 0, "salt": 1, "epoch": 2, "position": 2})
    assert a.take(4) == b.take(4)
    assert EpochSampler(5, seed=1, salt=1).take(5) != EpochSampler(5, seed=0, salt=1).take(5)


def test_task_schedule_follows_the_mix() -> None:
    mix = {"comprehension": 3.0, "generation": 1.0}
    tasks = [task_for_step(mix, seed=0, salt=7, step=s) for s in range(400)]
    assert tasks == [task_for_step(mix, seed=0, salt=7, step=s) for s in range(400)]
    assert 0.68 < tasks.count("comprehension") / 400 < 0.82
    assert set(task_for_step({"generation": 1.0}, seed=0, salt=0, step=s) for s in range(20)) == {"generation"}
