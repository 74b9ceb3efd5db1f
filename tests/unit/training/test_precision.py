"""fp32 master weights under a bf16/fp16 base (issue 20, item 1): what trains is float32 while the frozen base keeps
its dtype, autocast on CPU too, the dtypes come back after the stage. Run::

    .venv/bin/pytest tests/unit/training/test_precision.py -q
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from components.training.precision import Precision, low_precision_dtype, upcast_trainable
from components.training.stages import trainable_parameters
from components.training.trainer import TrainArgs, train_stage
from tests.unit.training.conftest import ModelFactory, pools_and_collate


@pytest.mark.parametrize(("dtype", "stage"), [(torch.bfloat16, 3), (torch.bfloat16, 2), (torch.float16, 3)])
def test_trainable_tensors_train_in_fp32_over_a_low_precision_base(
    make_model: ModelFactory, toy_dataset: Path, toy_vq: Path, tmp_path: Path, dtype: torch.dtype, stage: int
) -> None:
    model = make_model("hlora").to(dtype)  # model.dtype: bfloat16 / float16 loads the whole model in that dtype
    pools, collate = pools_and_collate(model, toy_dataset, toy_vq)
    trains = trainable_parameters(model, stage, "comprehension")
    before = {n: p.detach().clone() for n, p in model.named_parameters() if n in trains}
    seen: list[tuple[set[torch.dtype], set[torch.dtype]]] = []

    def during(step: int, metrics: dict[str, float]) -> None:  # called inside the loop, after optimizer.step()
        trainable = {p.dtype for n, p in model.named_parameters() if n in trains}
        frozen = {p.dtype for n, p in model.named_parameters() if n not in trains and not p.requires_grad}
        seen.append((trainable, frozen))

    args = TrainArgs(steps=3, lr=1e-2, batch_size=4, seed=0, task_mix={"comprehension": 1.0})
    result = train_stage(model, stage, pools, collate, args, out_dir=tmp_path, on_metrics=during)

    assert seen and all(t == {torch.float32} and f == {dtype} for t, f in seen), seen
    assert all(torch.isfinite(torch.tensor(result.losses))), result.losses
    saved = load_file(str(result.final))
    assert {v.dtype for k, v in saved.items() if k in trains} == {torch.float32}  # the master weights are saved
    params = dict(model.named_parameters())
    assert {params[n].dtype for n in trains} == {dtype}  # back to one dtype for inference and the next stage
    moved = [n for n in trains if not torch.equal(params[n].detach(), before[n])]
    assert moved, "nothing trained"


def test_upcast_keeps_the_parameter_objects_and_ties() -> None:
    emb = torch.nn.Embedding(10, 4).to(torch.bfloat16)
    head = torch.nn.Linear(4, 10, bias=False)
    head.weight = emb.weight  # tied, as Gemma's embedding and head
    model = torch.nn.ModuleDict({"emb": emb, "head": head, "frozen": torch.nn.Linear(4, 4).to(torch.bfloat16)})
    param = emb.weight
    assert low_precision_dtype(model) == torch.bfloat16 and low_precision_dtype(torch.nn.Linear(2, 2)) is None
    restore = upcast_trainable(model, ["emb.weight", "head.weight"])
    assert emb.weight is param and head.weight is param and param.dtype == torch.float32
    assert model["frozen"].weight.dtype == torch.bfloat16
    restore()
    assert param.dtype == torch.bfloat16 and head.weight is param


def test_autocast_rule() -> None:
    cpu = torch.device("cpu")
    fp32 = torch.nn.Linear(4, 4)
    assert Precision.for_model(fp32, [], cpu).dtype is None  # exact CPU resume keeps fp32 without autocast
    assert Precision.for_model(fp32, [], torch.device("cuda")).dtype == torch.bfloat16
    assert Precision.for_model(fp32, [], torch.device("cuda"), bf16=False).dtype is None
    half = Precision.for_model(torch.nn.Linear(4, 4).half(), [], cpu)
    assert half.dtype == torch.float16 and half.scaler is not None
    bf16 = torch.nn.Linear(4, 4).to(torch.bfloat16)
    precision = Precision.for_model(bf16, ["weight"], cpu)
    assert precision.dtype == torch.bfloat16 and precision.scaler is None
    with precision.context():
        out = bf16(torch.randn(2, 4))  # fp32 weight, bf16 bias: autocast makes them meet
    assert out.dtype == torch.bfloat16
