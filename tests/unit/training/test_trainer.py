"""The stage trainer: cosine schedule values, falling loss per stage, gradient accumulation equivalence, plugin
routing, exact in-process resume. Run::

    .venv/bin/pytest tests/unit/training/test_trainer.py -q
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from components.training.stages import trainable_parameters
from components.training.trainer import TrainArgs, cosine_schedule, record_loss_sum, token_loss_sum, train_stage
from tests.unit.training.conftest import ModelFactory, pools_and_collate


def test_cosine_schedule_values() -> None:
    f = [cosine_schedule(s, warmup=4, total=14) for s in range(14)]
    assert f[:4] == [0.25, 0.5, 0.75, 1.0]  # linear warm-up reaches the peak at the last warm-up step
    assert f[4] == 1.0 and f[-1] == pytest.approx(0.0, abs=1e-12)
    assert f[9] == pytest.approx(0.5 * (1 + math.cos(math.pi * 5 / 9)))
    assert all(a >= b for a, b in zip(f[3:], f[4:], strict=False))  # monotone after warm-up
    assert cosine_schedule(9, warmup=0, total=10, min_ratio=0.1) == pytest.approx(0.1)
    assert cosine_schedule(0, warmup=0, total=1) == 1.0


def fixed_batch_loss(model: torch.nn.Module, batch: dict[str, object]) -> float:
    """Token-mean loss on one fixed batch (no data noise between before and after)."""
    inputs = dict(batch)
    labels = inputs.pop("labels")
    model.eval()
    with torch.no_grad():
        logits = model(**inputs).logits
    n = int((labels[:, 1:] != -100).sum())  # type: ignore[index]
    return float(token_loss_sum(logits, labels)) / n  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("stage", "task"), [(1, "comprehension"), (1, "generation"), (2, "generation"), (3, "comprehension")]
)
def test_loss_falls_in_every_stage(
    make_model: ModelFactory, toy_dataset: Path, toy_vq: Path, tmp_path: Path, stage: int, task: str
) -> None:
    model = make_model("hlora")
    pools, collate = pools_and_collate(model, toy_dataset, toy_vq)
    pool = "reconstruction" if stage == 1 and task == "generation" else task
    batch = collate(pools[pool][:6])
    before = fixed_batch_loss(model, batch)
    args = TrainArgs(steps=6, lr=2e-2, batch_size=4, seed=0, task_mix={task: 1.0})
    result = train_stage(model, stage, pools, collate, args, out_dir=tmp_path)
    assert set(result.tasks) == {task}
    assert fixed_batch_loss(model, batch) < before - 0.02, result.losses  # deterministic: seeded, fixed batch
    assert result.curve is not None and result.curve.stat().st_size > 0
    assert (tmp_path / "done.json").is_file() and not (tmp_path / "checkpoints").exists()


def test_base_stage_loss_falls(toy_base: Path, toy_dataset: Path, toy_vq: Path, tmp_path: Path) -> None:
    from components.models.vlm import MedVLM

    model = MedVLM.load(toy_base)
    pools, collate = pools_and_collate_base(model, toy_dataset)
    batch = collate(pools["comprehension"][:6])  # type: ignore[operator]
    before = fixed_batch_loss(model, batch)
    train_stage(model, "base", pools, collate, TrainArgs(steps=6, lr=3e-3, batch_size=8), out_dir=tmp_path)  # type: ignore[arg-type]
    assert fixed_batch_loss(model, batch) < before - 0.3


def pools_and_collate_base(model: object, dataset: Path) -> tuple[dict[str, list[dict[str, object]]], object]:
    from components.models.collate import VLMCollator
    from components.training.data import ImageStore, read_records, select

    recs = select(read_records(dataset), split="train", task="comprehension")
    store = ImageStore(dataset, model.image_size, model.channels)  # type: ignore[attr-defined]
    return {"comprehension": recs}, VLMCollator(model.tokenizer, model.num_image_tokens, store.vision)  # type: ignore[attr-defined]


def _trained(make_model: ModelFactory, dataset: Path, vq: Path, out: Path, **kw: object) -> dict[str, torch.Tensor]:
    model = make_model("hlora", dropout=0.0)
    pools, collate = pools_and_collate(model, dataset, vq)
    args = TrainArgs(steps=2, lr=1e-2, seed=3, task_mix={"comprehension": 1.0}, **kw)  # type: ignore[arg-type]
    train_stage(model, 3, pools, collate, args, out_dir=out)
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_grad_accumulation_equals_the_big_batch(
    make_model: ModelFactory, toy_dataset: Path, toy_vq: Path, tmp_path: Path
) -> None:
    """accum 2 x batch 2 == batch 4: the loss is normalised by the step's token count, not per micro-batch."""
    big = _trained(make_model, toy_dataset, toy_vq, tmp_path / "a", batch_size=4, grad_accum=1)
    acc = _trained(make_model, toy_dataset, toy_vq, tmp_path / "b", batch_size=2, grad_accum=2)
    start = {n: p.detach() for n, p in make_model("hlora", dropout=0.0).named_parameters()}
    moved = [n for n in big if not torch.equal(big[n], start[n])]
    assert moved  # the test means something: parameters did change
    for name in big:
        torch.testing.assert_close(acc[name], big[name], rtol=1e-4, atol=1e-6)


def test_record_loss_weighs_every_record_alike() -> None:
    logits = torch.randn(3, 5, 7)
    labels = torch.full((3, 5), -100)
    labels[0, 1:] = torch.tensor([1, 2, 3, 4])  # a long answer
    labels[1, 4] = 5  # a one-token answer
    # row 2 has no label: it counts for nothing
    per_token = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 7), labels[:, 1:].reshape(-1),
                                                  ignore_index=-100, reduction="none").view(3, 4)  # fmt: skip
    expected = per_token[0].mean() + per_token[1, 3]
    torch.testing.assert_close(record_loss_sum(logits, labels), expected)
    with pytest.raises(ValueError, match="loss must be 'token' or 'record'"):
        TrainArgs(steps=1, lr=1e-3, loss="sample")


def test_record_loss_accumulation_equals_the_big_batch(
    make_model: ModelFactory, toy_dataset: Path, toy_vq: Path, tmp_path: Path
) -> None:
    """With the per-record loss too, accum 2 x batch 2 == batch 4 (normalised by the step's record count)."""
    # batches of mixed lengths (grouping by length would give every record of a batch the same answer length, where
    # the two losses are equal)
    kw: dict[str, object] = {"group_by_length": False}
    big = _trained(make_model, toy_dataset, toy_vq, tmp_path / "a", batch_size=4, grad_accum=1, loss="record", **kw)
    acc = _trained(make_model, toy_dataset, toy_vq, tmp_path / "b", batch_size=2, grad_accum=2, loss="record", **kw)
    token = _trained(make_model, toy_dataset, toy_vq, tmp_path / "c", batch_size=4, grad_accum=1, **kw)
    assert any(not torch.equal(big[n], token[n]) for n in big)  # the two losses differ on these records
    for name in big:
        torch.testing.assert_close(acc[name], big[name], rtol=1e-4, atol=1e-6)


def test_single_task_steps_touch_only_that_task(
    make_model: ModelFactory, toy_dataset: Path, toy_vq: Path, tmp_path: Path
) -> None:
    model = make_model("lora")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    pools, collate = pools_and_collate(model, toy_dataset, toy_vq)
    args = TrainArgs(steps=3, lr=1e-2, batch_size=2, task_mix={"comprehension": 1.0})
    train_stage(model, 3, pools, collate, args, out_dir=tmp_path)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    allowed = trainable_parameters(model, 3, "comprehension")
    assert changed and changed <= allowed
    assert any(".lora_A.comprehension" in n for n in changed)  # the comprehension plugin itself learned


class Crash(Exception):
    pass


def test_resume_after_a_crash_equals_an_uninterrupted_run(
    make_model: ModelFactory, toy_dataset: Path, toy_vq: Path, tmp_path: Path
) -> None:
    """In process: crash after the step-4 checkpoint, train again -> bitwise the uninterrupted weights (CPU, fp32,
    dropout on: the RNG state is part of the checkpoint)."""
    args = TrainArgs(steps=7, lr=5e-3, batch_size=2, checkpoint_every=2, seed=1, warmup=2)
    calls: list[tuple[int, int, float | None]] = []

    def run(out: Path, crash_at: int | None) -> tuple[dict[str, torch.Tensor], list[float]]:
        model = make_model("hlora", dropout=0.1)
        pools, collate = pools_and_collate(model, toy_dataset, toy_vq)
        calls.clear()

        def progress(step: int, total: int, loss: float | None) -> None:
            calls.append((step, total, loss))
            if step == crash_at:
                raise Crash

        try:
            result = train_stage(model, "mixed", pools, collate, args, out_dir=out, progress=progress)
        except Crash:
            return {}, []
        return {n: p.detach().clone() for n, p in model.named_parameters()}, result.losses

    straight, straight_losses = run(tmp_path / "straight", None)
    assert run(tmp_path / "resumed", crash_at=5) == ({}, [])
    assert sorted(p.name for p in (tmp_path / "resumed" / "checkpoints").iterdir()) == [
        "step-00000002",
        "step-00000004",
    ]
    resumed, resumed_losses = run(tmp_path / "resumed", None)
    assert calls[0] == (4, 7, None)  # the progress protocol: the step it resumed from, then one call per step
    assert [(s, t) for s, t, _ in calls[1:]] == [(5, 7), (6, 7), (7, 7)]
    assert all(loss is not None for *_, loss in calls[1:])
    assert resumed_losses == straight_losses
    for name, value in straight.items():
        assert torch.equal(resumed[name], value), name


def test_a_finished_stage_is_reused_only_with_the_same_settings(
    make_model: ModelFactory, toy_dataset: Path, toy_vq: Path, tmp_path: Path
) -> None:
    model = make_model("lora")
    pools, collate = pools_and_collate(model, toy_dataset, toy_vq)
    args = TrainArgs(steps=2, lr=1e-2, batch_size=2, task_mix={"comprehension": 1.0})
    first = train_stage(model, 3, pools, collate, args, out_dir=tmp_path)
    again = train_stage(make_model("lora"), 3, pools, collate, args, out_dir=tmp_path)
    assert again.losses == first.losses  # loaded, not trained again
    with pytest.raises(ValueError, match="other settings, data or parameters"):
        train_stage(make_model("lora"), 3, pools, collate, TrainArgs(steps=3, lr=1e-2, batch_size=2), out_dir=tmp_path)


def test_projector_only_tasks_draw_only_records_with_an_image() -> None:
    """Stage 1 trains the comprehension projector alone: text-only records (issue 16) give it no gradient, so its
    pool keeps only records with images; stage 3 (plugins) keeps them all."""
    from components.training.stages import stage_spec
    from components.training.trainer import _task_pools

    with_image = {"id": "a", "image": "x.png", "task": "comprehension"}
    two_images = {"id": "b", "image": ["x.png", "y.png"], "task": "comprehension"}
    text_only = {"id": "c", "image": None, "task": "comprehension"}
    pools = {"comprehension": [with_image, two_images, text_only], "generation": [], "reconstruction": []}
    assert [r["id"] for r in _task_pools(stage_spec(1), pools)["comprehension"]] == ["a", "b"]
    assert [r["id"] for r in _task_pools(stage_spec(3), pools)["comprehension"]] == ["a", "b", "c"]
