"""The client side of every method, without transport: put the global deltas onto a fresh W0 model, evaluate
it on the site's held-out records, train locally, and send back the new deltas (same keys and shapes). Flower's
ClientApp (:mod:`components.federated.app`) and the in-process runner both call :func:`local_round`.

    arrays, metrics = local_round(task, settings, server.payload(), server_round=1)
    metrics          # {"val_loss": ..., "val_accuracy": ... (global model before training), "train_loss": ...}

The phase is read from the payload's keys (``::values`` sparse, ``::A``/``::B`` LoRA, ``::delta`` dense), so a
client needs no state between rounds: with Flower's default SuperNode every message is a fresh ClientApp process
(a warm SuperNode, :mod:`components.federated.warm`, keeps one, and with it the loaded task). Sparse rounds
train only the masked entries (the mask rebuilt from the shared seed, never sent); LoRA rounds train A and B with
W0 frozen; full rounds train the adapted matrices densely. Every method also trains the task's heads densely.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from components.federated.settings import FedSettings
from components.federated.slora import attach_low_rank, attach_sparse, get_weight, shared_mask
from components.federated.tasks import FedTask

Readback = Callable[[], dict[str, np.ndarray]]


def _t(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(array, dtype=np.float32, copy=True))


def apply_payload(
    task: FedTask, model: nn.Module, arrays: Mapping[str, np.ndarray], settings: FedSettings
) -> tuple[list[nn.Parameter], Readback]:
    """Load the global deltas into ``model`` (at W0); return the parameters to train and a function that reads
    the model's deltas back in the payload's layout."""
    for p in model.parameters():
        p.requires_grad_(False)
    trainable: list[nn.Parameter] = []
    readers: dict[str, Callable[[], torch.Tensor]] = {}
    for name, module in task.target_modules(model).items():
        if f"{name}::values" in arrays:
            shape = tuple(get_weight(module).shape)
            idx = shared_mask(shape, settings.density, settings.seed, name)
            sparse = attach_sparse(module, idx, _t(arrays[f"{name}::values"]).reshape(-1))
            trainable.append(sparse.values)
            readers[f"{name}::values"] = sparse.values.detach
        elif f"{name}::A" in arrays:
            lora = attach_low_rank(module, _t(arrays[f"{name}::A"]), _t(arrays[f"{name}::B"]), settings.lora_scale)
            trainable += [lora.a, lora.b]
            readers[f"{name}::A"] = lora.a.detach
            readers[f"{name}::B"] = lora.b.detach
        elif f"{name}::delta" in arrays:
            trainable.append(_add_delta(get_weight(module), arrays[f"{name}::delta"], readers, name))
        else:
            raise KeyError(f"the payload has nothing for adapted matrix {name!r}")
    for name, param in task.head_params(model).items():
        trainable.append(_add_delta(param, arrays[f"{name}::delta"], readers, name))
    for p in trainable:
        p.requires_grad_(True)
    return trainable, lambda: {k: read().cpu().numpy().astype(np.float32) for k, read in readers.items()}


def _add_delta(
    param: torch.Tensor, delta: np.ndarray, readers: dict[str, Callable[[], torch.Tensor]], name: str
) -> nn.Parameter:
    if not isinstance(param, nn.Parameter):
        raise TypeError(f"{name} is not a parameter")
    w0 = param.detach().clone()
    with torch.no_grad():
        param.add_(_t(delta).to(param.dtype).view_as(param))
    readers[f"{name}::delta"] = lambda: param.detach() - w0
    return param


def client_seed(settings: FedSettings, server_round: int, site: str) -> int:
    """The data-order seed of one site in one round (a pure function, so a re-run repeats exactly)."""
    return (settings.seed * 1_000_003 + server_round * 7919 + sum(map(ord, site))) % (1 << 31)


def local_round(
    task: FedTask, settings: FedSettings, arrays: Mapping[str, np.ndarray], server_round: int
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """One round at one site: evaluate the global model, train ``local_steps``, return (new deltas, metrics)."""
    model = task.model()
    params, readback = apply_payload(task, model, arrays, settings)
    before = task.evaluate(model)
    loss = task.train(
        model,
        params,
        steps=settings.local_steps,
        lr=settings.lr,
        batch_size=settings.batch_size,
        seed=client_seed(settings, server_round, task.site),
    )
    metrics = {"train_loss": loss, "val_loss": before["loss"], "val_accuracy": before["accuracy"]}
    out = readback()
    # the payload's key order: Flower's strategy wrappers (DP clipping) pair reply and payload arrays by position
    return {**{k: out[k] for k in arrays if k in out}, **out}, metrics


def evaluate_payload(task: FedTask, settings: FedSettings, arrays: Mapping[str, np.ndarray]) -> dict[str, float]:
    """The global model (W0 + the payload's deltas) scored on the site's held-out records."""
    model = task.model()
    apply_payload(task, model, arrays, settings)
    with torch.no_grad():
        return task.evaluate(model)
