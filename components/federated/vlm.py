"""Federated SLoRA on the trained medtune VLM: the ``vlm`` task and the pieces the ``federated`` stage needs
(site files in, a model folder out).

    sites = write_site_files(dataset_dir, out / "sites", sites=["site-0", "site-1"], partition="site")
    task = vlm_task({"model_dir": m, "dataset": d, "sites_dir": out / "sites"}, SiteRef(0, 2))
    model_dir = merge_into_model(m, read_deltas(run_out), out / "model", meta={...})

What is adapted: the base weight of every linear layer that carries the comprehension plugin (``...base_layer``
inside peft's H-LoRA or LoRA layers), with the trained plugins kept frozen and the comprehension plugin active;
clients learn on their site's comprehension records (VQA) with the training's token loss. The stage merges the
final ΔW into those base weights and writes them into the copied folder's ``trained.safetensors`` (which
:func:`components.training.plugins.load_trained` loads over the base), so evaluation, safety and registration load
the federated model exactly like a trained one. A site's held-out score is its own ``val`` records (or, when it has
none, its last fifth of groups held out of its training): token loss and answer-token accuracy (teacher forcing).

Sites: ``partition="site"`` keeps each named site's records (``features.site``); ``"dirichlet"`` pools the named
sites' records and splits them Dirichlet(α) over the answers into as many sites (experiments). Each site's file
holds only its records (train and val splits); a client reads only its own file.
"""

from __future__ import annotations

import copy
import json
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from components.federated.partition import PartitionError, dirichlet_partition, site_partition
from components.federated.tasks import SiteRef

SITES_INDEX = "sites.json"


def _answer(record: Mapping[str, Any]) -> str:
    turns = record.get("conversations") or []
    return str(turns[1]["value"]).strip().lower() if len(turns) > 1 else ""


def write_site_files(
    dataset_dir: str | Path,
    out_dir: str | Path,
    *,
    sites: Sequence[str],
    partition: str = "site",
    alpha: float = 1.0,
    seed: int = 0,
) -> dict[str, Any]:
    """One JSONL per site (``site-<i>.jsonl``: its comprehension records of the train and val splits) and
    ``sites.json`` (index -> site name, record counts). Returns the index."""
    from components.training.data import read_records

    records = [
        r for r in read_records(dataset_dir) if r.get("task") == "comprehension" and r.get("split") in ("train", "val")
    ]
    wanted = [str(s) for s in sites]
    by_site = site_partition([r for r in records if (r.get("features") or {}).get("site") in wanted])
    absent = [s for s in wanted if s not in by_site]
    if absent:
        known = sorted({str((r.get("features") or {}).get("site")) for r in records})
        raise PartitionError(f"no comprehension records for sites {absent}; the dataset's sites: {known}")
    chosen = [r for r in records if (r.get("features") or {}).get("site") in wanted]
    if partition == "site":
        groups = [(name, [chosen[i] for i in by_site[name]]) for name in wanted]
    elif partition == "dirichlet":
        parts = dirichlet_partition([_answer(r) for r in chosen], len(wanted), alpha, seed, min_size=2)
        groups = [(f"dirichlet-{i}", [chosen[j] for j in part]) for i, part in enumerate(parts)]
    else:
        raise PartitionError(f"partition {partition!r} unknown; choose site or dirichlet")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    index: dict[str, Any] = {"partition": partition, "sites": []}
    for i, (name, recs) in enumerate(groups):
        lines = "".join(json.dumps(r, sort_keys=True) + "\n" for r in recs)
        (out / f"site-{i}.jsonl").write_text(lines, encoding="utf-8")
        splits = {s: sum(r.get("split") == s for r in recs) for s in ("train", "val")}
        index["sites"].append({"index": i, "name": name, **splits})
    (out / SITES_INDEX).write_text(json.dumps(index, indent=1) + "\n")
    return index


@lru_cache(maxsize=2)
def _trained(model_dir: str) -> nn.Module:
    from components.training.plugins import load_trained
    from components.training.trainer import switch_plugin

    model = load_trained(model_dir)
    switch_plugin(model, "comprehension")
    model.eval()
    return model


def plugin_base_layers(model: nn.Module) -> dict[str, nn.Module]:
    """``<module path>.weight`` -> the frozen base linear under each plugin-carrying layer of the LM."""
    return {
        f"{name}.weight": module
        for name, module in model.named_modules()
        if name.startswith("lm.") and name.endswith(".base_layer") and isinstance(module, nn.Linear)
    }


@dataclass
class VLMTask:
    """One site's comprehension records on the trained VLM (see the module docstring)."""

    site: str
    model_dir: str
    dataset: str
    train_records: list[dict[str, Any]] = field(default_factory=list)
    val_records: list[dict[str, Any]] = field(default_factory=list)
    _collate: Any = None

    def num_examples(self) -> int:
        return len(self.train_records)

    def model(self) -> nn.Module:
        return copy.deepcopy(_trained(self.model_dir))

    def target_modules(self, model: nn.Module) -> dict[str, nn.Module]:
        return plugin_base_layers(model)

    def head_params(self, model: nn.Module) -> dict[str, nn.Parameter]:
        return {}

    def collate(self, model: nn.Module) -> Any:
        if self._collate is None:
            from components.models.backend import image_loader, store_size
            from components.training.data import ImageStore

            vlm: Any = model
            store = ImageStore(self.dataset, *store_size(vlm, 64, 1))
            self._collate = vlm.collator(image_loader(vlm, store))
        return self._collate

    def _loss(self, model: nn.Module, records: list[dict[str, Any]]) -> tuple[Tensor, int, int]:
        from components.training.trainer import token_loss_sum

        batch = dict(self.collate(model)(records))
        labels = batch.pop("labels")
        logits = model(**batch).logits
        mask = labels[:, 1:] != -100
        correct = int(((logits[:, :-1].argmax(-1) == labels[:, 1:]) & mask).sum())
        return token_loss_sum(logits, labels), int(mask.sum()), correct

    def train(
        self, model: nn.Module, params: list[nn.Parameter], *, steps: int, lr: float, batch_size: int, seed: int
    ) -> float:
        if not self.train_records or steps == 0:
            return float("nan")
        gen = torch.Generator().manual_seed(seed)
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
        model.train()
        losses = []
        for _ in range(steps):
            idx = torch.randint(0, len(self.train_records), (min(batch_size, len(self.train_records)),), generator=gen)
            summed, tokens, _ = self._loss(model, [self.train_records[int(i)] for i in idx])
            loss = summed / max(1, tokens)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
        model.eval()
        return sum(losses) / len(losses)

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        if not self.val_records:
            return {"loss": float("nan"), "accuracy": float("nan"), "examples": 0.0}
        model.eval()
        loss, tokens, correct = 0.0, 0, 0
        for k in range(0, len(self.val_records), 16):
            s, t, c = self._loss(model, self.val_records[k : k + 16])
            loss, tokens, correct = loss + float(s), tokens + t, correct + c
        return {
            "loss": loss / max(1, tokens),
            "accuracy": correct / max(1, tokens),
            "examples": float(len(self.val_records)),
        }


def vlm_task(args: Mapping[str, Any], site: SiteRef | None) -> VLMTask:
    """``args``: ``model_dir`` (a trained model folder), ``dataset`` (the built dataset, for images) and
    ``sites_dir`` (written by :func:`write_site_files`); a site reads ``site-<partition-id>.jsonl`` there, or the
    SuperNode's own ``data`` file."""
    for key in ("model_dir", "dataset"):
        if not args.get(key):
            raise ValueError(f"the vlm task needs task_args.{key}")
    task = VLMTask("server", str(args["model_dir"]), str(args["dataset"]))
    if site is None:
        return task
    if not site.data and not args.get("sites_dir"):
        raise ValueError(f"site {site.label(str(site.partition_id))}: no records: start its SuperNode with "
                         "--node-config 'data=\"/path/to/its-records.jsonl\" site=\"its name\"'")  # fmt: skip
    path = Path(site.data) if site.data else Path(str(args.get("sites_dir", ""))) / f"site-{site.partition_id}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"site {site.label(str(site.partition_id))}: no records file at {path}")
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    index_file = path.parent / SITES_INDEX
    names = json.loads(index_file.read_text())["sites"] if index_file.is_file() and not site.data else []
    own = {str((r.get("features") or {}).get("site", "")) for r in records}
    default = own.pop() if len(own) == 1 and "" not in own else f"site-{site.partition_id}"
    task.site = site.name or next((s["name"] for s in names if s["index"] == site.partition_id), default)
    task.train_records = [r for r in records if r.get("split") == "train"]
    task.val_records = [r for r in records if r.get("split") == "val"]
    if not task.val_records and len(task.train_records) > 1:
        task.train_records, task.val_records = _hold_out(task.train_records)
    return task


def _hold_out(
    records: list[dict[str, Any]], fraction: float = 0.2
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A site without val records scores itself on its last groups (sorted ids, about ``fraction`` of the
    records, whole groups so no image is on both sides)."""
    groups = sorted({str(r.get("group", r.get("id"))) for r in records})
    keep = max(1, round(len(groups) * fraction)) if len(groups) > 1 else 0
    held = set(groups[len(groups) - keep :])
    return [r for r in records if str(r.get("group", r.get("id"))) not in held], [
        r for r in records if str(r.get("group", r.get("id"))) in held
    ]


def merge_into_model(
    model_dir: str | Path, deltas: Mapping[str, Tensor], out_dir: str | Path, *, meta: Mapping[str, Any]
) -> Path:
    """Copy a trained model folder to ``out_dir`` with W0 + ΔW of every adapted base weight written into its
    ``trained.safetensors`` (loaded over the base by ``load_trained``) and ``meta`` under ``federated`` in
    ``trained.json``. Written beside and renamed into place, so a half-written folder is never left."""
    from safetensors.torch import load_file, save_file

    src, out = Path(model_dir), Path(out_dir)
    model = _trained(str(src))
    weights: dict[str, Tensor] = {name: module.weight for name, module in plugin_base_layers(model).items()}  # type: ignore[misc]
    unknown = sorted(set(deltas) - set(weights))
    if unknown:
        raise KeyError(f"federated deltas for parameters the model lacks: {unknown[:3]}")
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(src, tmp)
    tensors = load_file(str(tmp / "trained.safetensors"))
    for name, delta in deltas.items():
        stripped = name.replace("lm.base_model.model.", "lm.", 1)
        tensors[stripped] = (weights[name].detach() + delta.to(weights[name].dtype)).contiguous()
    save_file(tensors, str(tmp / "trained.safetensors"))
    info = json.loads((tmp / "trained.json").read_text())
    info["federated"] = dict(meta)
    (tmp / "trained.json").write_text(json.dumps(info, indent=2, default=str) + "\n")
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out
