"""What a site trains: a :class:`FedTask` holds one site's records (never anyone else's), builds the shared base
model W0, names the matrices SLoRA adapts and the parameters every method trains densely, and runs local steps
and evaluation. Tasks are found by short name, so a Flower run config says ``task = "mlp"`` and every client and
the server build the same thing.

    task = make_task("mlp", {"alpha": 0.5}, SiteRef(partition_id=0, num_partitions=3))
    model = task.model()                        # a fresh copy at W0
    task.target_modules(model)                  # {"net.0.weight": Linear(16, 32), ...}
    task.train(model, params, steps=5, lr=1e-3, batch_size=16, seed=0); task.evaluate(model)

Known tasks (:data:`TASKS`): ``mlp`` (synthetic Gaussian clusters split Dirichlet(α) over labels, a tiny MLP:
fast enough for the loopback deployment test), ``minilm`` (pretrained all-MiniLM-L6-v2 on VQA-RAD question
type, :mod:`components.federated.text`) and ``vlm`` (the trained medtune VLM on a site's records,
:mod:`components.federated.vlm`). A task built with ``site=None`` holds no data: the server uses it for shapes.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from components.federated.partition import dirichlet_partition
from components.federated.slora import get_weight


@dataclass(frozen=True)
class SiteRef:
    """Which site a client is: Flower's ``partition-id``/``num-partitions`` node config, or a site's own data."""

    partition_id: int
    num_partitions: int
    data: str = ""  # a path to the site's own records (on the SuperNode's host), when the task reads files
    name: str = ""  # the site's name as it calls itself (node config ``site``); "" = the task's default

    def label(self, default: str) -> str:
        return self.name or default


class FedTask(Protocol):
    site: str

    def num_examples(self) -> int: ...

    def model(self) -> nn.Module: ...

    def target_modules(self, model: nn.Module) -> dict[str, nn.Module]: ...

    def head_params(self, model: nn.Module) -> dict[str, nn.Parameter]: ...

    def train(
        self, model: nn.Module, params: list[nn.Parameter], *, steps: int, lr: float, batch_size: int, seed: int
    ) -> float: ...

    def evaluate(self, model: nn.Module) -> dict[str, float]: ...


TaskFactory = Callable[[Mapping[str, Any], SiteRef | None], FedTask]


def shapes(task: FedTask) -> tuple[dict[str, tuple[int, ...]], dict[str, tuple[int, ...]]]:
    """The adapted matrices' and the dense parameters' shapes (what the server needs to know)."""
    model = task.model()
    targets = {n: tuple(get_weight(m).shape) for n, m in task.target_modules(model).items()}
    heads = {n: tuple(p.shape) for n, p in task.head_params(model).items()}
    return targets, heads


@dataclass
class ClassifierTask:
    """A classifier on tensors: ``model(**inputs) -> logits``; the generic part of ``mlp`` and ``minilm``.

    ``targets`` are module paths whose ``.weight`` is adapted (named ``<path>.weight``); ``heads`` are parameter
    names trained densely by every method. ``base`` is the W0 model, copied for every round."""

    site: str
    base: nn.Module
    targets: list[str]
    heads: list[str]
    train_inputs: dict[str, Tensor] = field(default_factory=dict)
    train_labels: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    val_inputs: dict[str, Tensor] = field(default_factory=dict)
    val_labels: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    eval_batch: int = 256

    def num_examples(self) -> int:
        return int(self.train_labels.numel())

    def model(self) -> nn.Module:
        return copy.deepcopy(self.base)

    def target_modules(self, model: nn.Module) -> dict[str, nn.Module]:
        return {f"{path}.weight": model.get_submodule(path) for path in self.targets}

    def head_params(self, model: nn.Module) -> dict[str, nn.Parameter]:
        params = dict(model.named_parameters())
        return {name: params[name] for name in self.heads}

    def train(
        self, model: nn.Module, params: list[nn.Parameter], *, steps: int, lr: float, batch_size: int, seed: int
    ) -> float:
        n = self.num_examples()
        if n == 0 or steps == 0:
            return float("nan")
        gen = torch.Generator().manual_seed(seed)
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
        model.train()
        losses = []
        for _ in range(steps):
            idx = torch.randint(0, n, (min(batch_size, n),), generator=gen)
            logits = model(**{k: v[idx] for k, v in self.train_inputs.items()})
            loss = F.cross_entropy(logits, self.train_labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
        model.eval()
        return sum(losses) / len(losses)

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        return evaluate_classifier(model, self.val_inputs, self.val_labels, self.eval_batch)


@torch.no_grad()
def evaluate_classifier(
    model: nn.Module, inputs: Mapping[str, Tensor], labels: Tensor, batch: int = 256
) -> dict[str, float]:
    """Mean cross-entropy and accuracy of ``model`` on a labelled set (NaN on an empty one)."""
    n = int(labels.numel())
    if n == 0:
        return {"loss": float("nan"), "accuracy": float("nan"), "examples": 0.0}
    model.eval()
    loss_sum, correct = 0.0, 0
    for k in range(0, n, batch):
        logits = model(**{key: v[k : k + batch] for key, v in inputs.items()})
        y = labels[k : k + batch]
        loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(-1) == y).sum())
    return {"loss": loss_sum / n, "accuracy": correct / n, "examples": float(n)}


# -- mlp: synthetic clusters, a tiny MLP -------------------------------------------------------------------------------


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int, classes: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.out = nn.Linear(hidden, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.net(x))


@lru_cache(maxsize=4)
def _clusters(seed: int, samples: int, dim: int, classes: int, spread: float) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    means = torch.randn(classes, dim, generator=gen) * spread
    labels = torch.randint(0, classes, (samples,), generator=gen)
    x = means[labels] + torch.randn(samples, dim, generator=gen)
    return x, labels


def mlp_task(args: Mapping[str, Any], site: SiteRef | None) -> ClassifierTask:
    """Synthetic Gaussian clusters (``samples``, ``dim``, ``classes``, ``spread``) split Dirichlet(``alpha``) over
    ``num_partitions`` sites; each client keeps only its own share (last ``val_fraction`` of it for validation).
    ``fail_sites`` (list of partition ids) train with a NaN learning rate: the fault the server must reject."""
    seed = int(args.get("seed", 0))
    dim, hidden, classes = int(args.get("dim", 16)), int(args.get("hidden", 32)), int(args.get("classes", 4))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        base = MLP(dim, hidden, classes)
    task = ClassifierTask("server", base, targets=["net.0", "net.2"], heads=["out.weight", "out.bias"])
    if site is None:
        return task
    if site.data:  # the site's own records: an .npz with x (n x dim floats) and y (n class ids)
        x, y = _own_records(site.data, dim, classes)
        own = torch.arange(len(y))
    else:
        x, y = _clusters(seed, int(args.get("samples", 600)), dim, classes, float(args.get("spread", 1.5)))
        parts = dirichlet_partition(y.tolist(), site.num_partitions, float(args.get("alpha", 0.5)), seed, min_size=10)
        own = torch.tensor(parts[site.partition_id])
    n_val = max(1, int(len(own) * float(args.get("val_fraction", 0.2))))
    tr, va = own[:-n_val], own[-n_val:]
    task.site = site.label(f"site-{site.partition_id}")
    task.train_inputs, task.train_labels = {"x": x[tr]}, y[tr]
    task.val_inputs, task.val_labels = {"x": x[va]}, y[va]
    if site.partition_id in [int(i) for i in args.get("fail_sites", [])]:
        task.train = _nan_train.__get__(task)  # type: ignore[method-assign]
    return task


def _own_records(path: str, dim: int, classes: int) -> tuple[Tensor, Tensor]:
    import numpy as np

    try:
        with np.load(path) as f:
            x, y = torch.as_tensor(f["x"], dtype=torch.float32), torch.as_tensor(f["y"], dtype=torch.long)
    except (OSError, KeyError, ValueError) as e:
        raise ValueError(f"site records {path}: cannot read x and y ({e})") from None
    if x.ndim != 2 or x.shape[1] != dim or y.shape != (x.shape[0],) or len(y) < 2 or int(y.max()) >= classes:
        raise ValueError(f"site records {path}: need x of shape (n, {dim}), y of shape (n,) in [0, {classes})")
    return x, y


def _nan_train(self: ClassifierTask, model: nn.Module, params: list[nn.Parameter], **kwargs: Any) -> float:
    with torch.no_grad():
        for p in params:
            p.fill_(float("nan"))
    return float("nan")


def _text_task(args: Mapping[str, Any], site: SiteRef | None) -> FedTask:
    from components.federated.text import minilm_task

    return minilm_task(args, site)


def _vlm_task(args: Mapping[str, Any], site: SiteRef | None) -> FedTask:
    from components.federated.vlm import vlm_task

    return vlm_task(args, site)


#: Task factories by short name; heavy tasks import their modules only when built.
TASKS: dict[str, TaskFactory] = {"mlp": mlp_task, "minilm": _text_task, "vlm": _vlm_task}


def make_task(name: str, args: Mapping[str, Any], site: SiteRef | None) -> FedTask:
    if name not in TASKS:
        raise KeyError(f"federated task {name!r} unknown; known: {', '.join(sorted(TASKS))}")
    return TASKS[name](args, site)
