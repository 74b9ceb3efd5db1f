"""HealthGPT's stages on every whole-VLM family (issue 16): the base from a tiny random checkpoint, image-code
tokens added (rows at the mean; padding rows reused), two H-LoRA plugins on the language model, stages 1-3 train
what their table says (the loss is finite and the right tensors move), the generation path learns VQ codes, and a
crash mid-stage resumes bitwise equal to an uninterrupted run."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
import torch

from components.models.backend import image_loader, store_size
from components.models.hf import HFVLM
from components.models.vq import VQTokenizer
from components.training.data import ImageStore, encode_targets, read_records, record_pools, target_codes_from
from components.training.plugins import AdapterArgs, load_trained, prepare_model, save_trained
from components.training.stages import trainable_parameters
from components.training.trainer import TrainArgs, train_stage
from tests.fixtures.tiny_vlms import FAMILIES, build_tiny


def _available(family: str) -> Any:
    ready = importlib.util.find_spec(f"tests.fixtures.tiny_{family}") is not None
    return pytest.param(family, marks=pytest.mark.skipif(not ready, reason=f"no tiny {family} fixture"))


@pytest.fixture(scope="module", params=[_available(f) for f in FAMILIES])
def hf_base(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    family = request.param
    root = tmp_path_factory.mktemp(f"base-{family}")
    ckpt = build_tiny(family, root / "ckpt")
    return HFVLM.from_checkpoint(ckpt).save(root / "base")


def _setup(base: Path, dataset: Path, vq_dir: Path, seed: int = 0) -> tuple[Any, dict[str, list[Any]], Any]:
    torch.manual_seed(seed)
    vq = VQTokenizer.load(vq_dir)
    adapter = AdapterArgs(kind="hlora", rank=4, generation_rank=8, num_experts=2, dropout=0.1)
    model = prepare_model(base, codebook_size=vq.config.codebook_size, adapter=adapter)
    pools = record_pools(read_records(dataset), split="train")
    store = ImageStore(dataset, *store_size(model, vq.config.image_size, vq.config.channels))
    codes = encode_targets(vq, store, [*pools["generation"], *pools["reconstruction"]])
    collate = model.collator(image_loader(model, store), target_codes=target_codes_from(codes))
    return model, pools, collate


class Crash(Exception):
    pass


def test_three_stages_train_their_parameters_and_save_load_round_trips(
    hf_base: Path, toy_dataset: Path, toy_vq: Path, tmp_path: Path
) -> None:
    model, pools, collate = _setup(hf_base, toy_dataset, toy_vq)
    for stage in (1, 2, 3):
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        args = TrainArgs(steps=2, lr=1e-2, batch_size=2, checkpoint_every=10, seed=stage, warmup=0)
        result = train_stage(model, stage, pools, collate, args, out_dir=tmp_path / f"stage{stage}")
        assert all(torch.isfinite(torch.tensor(loss)) for loss in result.losses)
        moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
        assert moved and moved <= trainable_parameters(model, stage), (
            stage,
            sorted(moved - trainable_parameters(model, stage))[:5],
        )
    folder = save_trained(model, tmp_path / "model", base_dir=hf_base)
    again = load_trained(folder)
    ours = dict(model.named_parameters())
    for name, value in again.named_parameters():
        assert torch.equal(value, ours[name]), name


def test_resume_after_a_crash_equals_an_uninterrupted_run(
    hf_base: Path, toy_dataset: Path, toy_vq: Path, tmp_path: Path
) -> None:
    args = TrainArgs(steps=5, lr=5e-3, batch_size=2, checkpoint_every=2, seed=1, warmup=1)

    def run(out: Path, crash_at: int | None) -> tuple[dict[str, torch.Tensor], list[float]]:
        model, pools, collate = _setup(hf_base, toy_dataset, toy_vq)

        def progress(step: int, total: int, loss: float) -> None:
            if step == crash_at:
                raise Crash

        try:
            result = train_stage(model, "mixed", pools, collate, args, out_dir=out, progress=progress)
        except Crash:
            return {}, []
        return {n: p.detach().clone() for n, p in model.named_parameters()}, result.losses

    straight, straight_losses = run(tmp_path / "straight", None)
    assert run(tmp_path / "resumed", crash_at=3) == ({}, [])
    resumed, resumed_losses = run(tmp_path / "resumed", None)
    assert resumed_losses == straight_losses
    for name, value in straight.items():
        assert torch.equal(resumed[name], value), name
