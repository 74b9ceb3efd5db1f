"""SLoRA's math (issue 7 acceptance): one mask for every client, sparse aggregation equal to a dense reference on
the mask, the SVD initialisation equal to the best rank-r approximation, and the client deltas doing what they say.

    .venv/bin/pytest tests/unit/federated
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from components.federated.client import apply_payload, local_round
from components.federated.server import FederatedServer, Reply
from components.federated.settings import FedSettings
from components.federated.slora import attach_low_rank, attach_sparse, detach_delta, shared_mask, svd_lora_init
from components.federated.tasks import SiteRef, make_task, shapes

torch.set_num_threads(1)


def _sites(n: int = 3, **args: object) -> list:
    return [make_task("mlp", {"seed": 0, "alpha": 1.0, **args}, SiteRef(i, n)) for i in range(n)]


def test_mask_is_the_same_on_every_client_for_a_seed() -> None:
    a = shared_mask((32, 16), 0.1, seed=7, name="net.0.weight")
    b = shared_mask((32, 16), 0.1, seed=7, name="net.0.weight")
    assert torch.equal(a, b) and a.numel() == round(0.1 * 32 * 16) and a.unique().numel() == a.numel()
    assert not torch.equal(a, shared_mask((32, 16), 0.1, seed=8, name="net.0.weight"))
    assert not torch.equal(a, shared_mask((32, 16), 0.1, seed=7, name="net.2.weight"))
    # what the clients actually build from the payload: the same buffer at every site
    settings = FedSettings(method="slora", density=0.1, seed=7, rounds_sparse=1, rounds_lora=1)
    targets, heads = shapes(_sites(1)[0])
    payload = FederatedServer(settings, targets, heads).payload()
    built = []
    for task in _sites(3):
        model = task.model()
        apply_payload(task, model, payload, settings)
        built.append(model.net[0].parametrizations.weight[0].idx)
    assert all(torch.equal(built[0], other) for other in built[1:])
    assert torch.equal(built[0], a)


def test_sparse_round_changes_only_masked_entries_and_aggregate_equals_dense_reference() -> None:
    settings = FedSettings(method="slora", density=0.2, rounds_sparse=2, rounds_lora=1, local_steps=5, lr=0.01)
    tasks = _sites(3)
    targets, heads = shapes(tasks[0])
    server = FederatedServer(settings, targets, heads)
    down = server.payload()
    replies, dense = [], []
    for task in tasks:
        arrays, metrics = local_round(task, settings, down, 1)
        replies.append(Reply(task.site, arrays, task.num_examples(), metrics))
        # the dense reference: the client's whole ΔW, read from a model with its update applied
        model = task.model()
        w0 = model.net[0].weight.detach().clone()
        apply_payload(task, model, arrays, settings)
        detach_delta(model.net[0], merge=True)
        dense.append(((model.net[0].weight.detach() - w0).numpy(), task.num_examples()))
    idx = shared_mask(targets["net.0.weight"], settings.density, settings.seed, "net.0.weight").numpy()
    for d, _ in dense:  # a sparse round moves nothing off the mask
        off = np.ones(d.size, bool)
        off[idx] = False
        assert np.abs(d.reshape(-1)[off]).max() == 0.0 and np.abs(d.reshape(-1)[idx]).max() > 0
    server.aggregate(replies)
    reference = sum(d * n for d, n in dense) / sum(n for _, n in dense)
    got = server.sparse_dense("net.0.weight")
    np.testing.assert_allclose(got.reshape(-1)[idx], reference.reshape(-1)[idx], rtol=1e-5, atol=1e-7)
    assert np.count_nonzero(got.reshape(-1)) <= idx.size


@pytest.mark.parametrize("rank", [1, 4, 12])
def test_svd_init_is_the_best_rank_r_approximation(rank: int) -> None:
    gen = torch.Generator().manual_seed(rank)
    delta = torch.randn(24, 12, generator=gen) @ torch.diag(torch.linspace(3, 0.1, 12)) @ torch.randn(12, 12)
    scale = 2.0
    a, b = svd_lora_init(delta, rank, scale)
    assert a.shape == (rank, 12) and b.shape == (24, rank)
    u, s, vh = torch.linalg.svd(delta.double(), full_matrices=False)
    best = (u[:, :rank] * s[:rank]) @ vh[:rank]
    torch.testing.assert_close((scale * b.double() @ a.double()), best, rtol=1e-5, atol=1e-5)
    # Eckart-Young: the error left is exactly the tail of the spectrum
    err = torch.linalg.matrix_norm(delta.double() - scale * b.double() @ a.double())
    torch.testing.assert_close(err, s[rank:].pow(2).sum().sqrt(), rtol=1e-5, atol=1e-5)


def test_server_switches_from_sparse_rounds_to_svd_initialised_lora() -> None:
    settings = FedSettings(method="slora", density=0.3, rank=3, rounds_sparse=1, rounds_lora=1, lr=0.01)
    tasks = _sites(2)
    targets, heads = shapes(tasks[0])
    server = FederatedServer(settings, targets, heads)
    down = server.payload()
    server.aggregate([Reply(t.site, local_round(t, settings, down, 1)[0], t.num_examples()) for t in tasks])
    accumulated = {n: torch.from_numpy(server.accumulated[n]) for n in targets}
    assert server.round == 2 and all(d.abs().max() > 0 for d in accumulated.values())
    assert server.phase == "lora" and set(server.payload()) == {
        *(f"{n}::{f}" for n in targets for f in "AB"),
        *(f"{h}::delta" for h in heads),
    }
    # the LoRA init reproduces the rank-3 truncation of each accumulated ΔW (base back at W0)
    for name, delta in accumulated.items():
        a, b = torch.from_numpy(server.state[f"{name}::A"]), torch.from_numpy(server.state[f"{name}::B"])
        u, s, vh = torch.linalg.svd(delta.double(), full_matrices=False)
        best = (u[:, :3] * s[:3]) @ vh[:3]
        torch.testing.assert_close(settings.lora_scale * b.double() @ a.double(), best, rtol=1e-4, atol=1e-6)


def test_low_rank_delta_equals_w0_plus_scaled_product_and_trains_only_a_b() -> None:
    torch.manual_seed(0)
    lin = nn.Linear(6, 5)
    w0 = lin.weight.detach().clone()
    a, b = torch.randn(2, 6), torch.randn(5, 2)
    delta = attach_low_rank(lin, a, b, scale=2.0)
    x = torch.randn(4, 6)
    torch.testing.assert_close(lin(x), x @ (w0 + 2.0 * b @ a).T + lin.bias)
    trainable = {n for n, p in lin.named_parameters() if p.requires_grad}
    assert trainable == {"bias", "parametrizations.weight.0.a", "parametrizations.weight.0.b"}
    lin(x).sum().backward()
    assert delta.a.grad is not None and lin.parametrizations.weight.original.grad is None
    detach_delta(lin)
    assert torch.equal(lin.weight, w0)
    attach_sparse(lin, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="already carries a delta"):
        attach_sparse(lin, torch.tensor([0, 1]))


def test_slora_learns_on_noniid_sites_in_process() -> None:
    from components.federated.inprocess import run_in_process

    settings = FedSettings(method="slora", density=0.1, rank=4, rounds_sparse=2, rounds_lora=3, local_steps=20, lr=3e-3)
    server = run_in_process(settings, _sites(3))
    first, last = server.history[0].summary(), server.history[-1].summary()
    assert [r.phase for r in server.history] == ["sparse", "sparse", "lora", "lora", "lora"]
    assert last["val_accuracy"] > first["val_accuracy"] + 0.2
    assert last["train_loss"] < first["train_loss"]
    # LoRA rounds move more bytes than 10% sparse rounds, and both far fewer than full deltas would
    assert server.history[0].bytes_up < server.history[-1].bytes_up
