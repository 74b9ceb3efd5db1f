"""Records, images, VQ target codes and the seeded, resumable batch order of the trainer.

    from components.training.data import ImageStore, EpochSampler, read_records, record_pools, task_for_step
    records = read_records(Path("data/vlhealth"))
    pools = record_pools(records, split="train")          # comprehension / generation / reconstruction
    store = ImageStore(Path("data/vlhealth"), image_size=64, channels=1)
    sampler = EpochSampler(len(pools["comprehension"]), seed=0)
    indices = sampler.take(8)                               # crosses epochs; state_dict() resumes exactly
    task = task_for_step({"comprehension": 0.5, "generation": 0.5}, seed=0, salt=3, step=17)

Choices (METHODS.md §1 leaves data order open):

- **Batch order** is a pure function of (seed, pool, epoch, position): each epoch of a pool is the permutation
  ``numpy.random.default_rng([seed, salt, epoch])``, and the sampler's state is just (epoch, position). A resumed run
  continues exactly where the checkpoint left it, without any RNG state to restore for the data.
- **The task of a step** is a pure function of (seed, stage salt, step): batches are single-task, drawn with the
  stage's task mix (see :mod:`components.training.trainer` for why single-task batches).
- **Reconstruction records** (stage 1 generation alignment, METHODS.md: "generation trains its projector and its
  H-LoRA (on reconstruction)"): one per distinct image of the given records, asking for the image itself; the answer
  is the image's own VQ codes.
- **Images** are read once and cached as tensors (a few hundred 64 px images): the vision encoder's normalised
  input and the [0, 1] pixels the VQ tokenizer and the image metrics use.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from components.data.records import RECORDS_FILE, TASKS
from components.models.collate import make_image_loader

Record = dict[str, Any]
RECONSTRUCTION_PROMPT = "<image>\nReconstruct this image."
RECONSTRUCTION_ANSWER = "The same image."


def read_records(dataset_dir: str | Path) -> list[Record]:
    """Every record of ``dataset_dir/records.jsonl`` (a built VL-Health folder), in file order."""
    path = Path(dataset_dir) / RECORDS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: build the dataset first (`medtune data build`)")
    out: list[Record] = []
    for no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}, line {no}: not valid JSON ({e.msg})") from None
    return out


def dataset_fingerprint(dataset_dir: str | Path) -> str:
    """SHA-256 of ``records.jsonl``: records carry their images' SHA-256, so this versions the images too."""
    path = Path(dataset_dir) / RECORDS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: build the dataset first (`medtune data build`)")
    return hashlib.sha256(path.read_bytes()).hexdigest()


def select(
    records: Iterable[Record], *, split: str | None = None, task: str | None = None, kinds: Sequence[str] = ()
) -> list[Record]:
    """Records of one split / task / set of kinds (None or empty: any)."""
    return [
        r
        for r in records
        if (split is None or r.get("split", "train") == split)
        and (task is None or r.get("task") == task)
        and (not kinds or r.get("kind") in kinds)
    ]


def reconstruction_records(records: Iterable[Record]) -> list[Record]:
    """One "reconstruct this image" generation record per distinct image (input or target) of ``records``."""
    seen: dict[str, Record] = {}
    for r in records:
        for key in ("image", "target_image"):
            path = r.get(key)
            if path and path not in seen:
                seen[path] = {
                    "id": f"reconstruction/{Path(path).stem}",
                    "source": r.get("source", ""),
                    "image": path,
                    "target_image": path,
                    "modality": r.get("modality", "other"),
                    "task": "generation",
                    "kind": "reconstruction",
                    "split": r.get("split", "train"),
                    # the image's own features as a generation example (FLix composes its adapters from them)
                    "features": {**(r.get("features") or {}), "task": "generation"},
                    "conversations": [
                        {"from": "human", "value": RECONSTRUCTION_PROMPT},
                        {"from": "gpt", "value": RECONSTRUCTION_ANSWER},
                    ],
                }
    return list(seen.values())


def record_pools(records: Iterable[Record], split: str = "train") -> dict[str, list[Record]]:
    """The pools the stage table names (:data:`components.training.stages.POOLS`) for one split."""
    part = select(records, split=split)
    return {
        "comprehension": select(part, task="comprehension"),
        "generation": select(part, task="generation"),
        "reconstruction": reconstruction_records(part),
    }


class ImageStore:
    """Cached images of a dataset folder: ``vision(path)`` for the encoder, ``pixels(path)`` in [0, 1]."""

    def __init__(self, dataset_dir: str | Path, image_size: int, channels: int) -> None:
        self.root = Path(dataset_dir)
        self.image_size, self.channels = image_size, channels
        self._load = make_image_loader(self.root, image_size, channels)
        self._vision: dict[str, Tensor] = {}
        self._pixels: dict[str, Tensor] = {}
        self._images: dict[str, Image.Image] = {}

    def image(self, path: str) -> Image.Image:
        """The file as an RGB PIL image, unresized (a whole HF VLM's processor does size and normalisation)."""
        if path not in self._images:
            with Image.open(self.root / path) as raw:
                self._images[path] = raw.convert("RGB")
        return self._images[path]

    def vision(self, path: str) -> Tensor:
        if path not in self._vision:
            self._vision[path] = self._load(path)
        return self._vision[path]

    def pixels(self, path: str) -> Tensor:
        """(C, H, W) float32 in [0, 1] at the store's size (bicubic when the file differs)."""
        if path not in self._pixels:
            with Image.open(self.root / path) as raw:
                img = raw.convert("L" if self.channels == 1 else "RGB")
            if img.size != (self.image_size, self.image_size):
                img = img.resize((self.image_size, self.image_size), Image.Resampling.BICUBIC)
            arr = torch.from_numpy(np.asarray(img, dtype=np.float32).copy()) / 255.0
            self._pixels[path] = arr.unsqueeze(0) if arr.ndim == 2 else arr.permute(2, 0, 1)
        return self._pixels[path]

    def pixel_batch(self, paths: Sequence[str]) -> Tensor:
        return torch.stack([self.pixels(p) for p in paths])


@torch.no_grad()
def encode_targets(vq: Any, store: ImageStore, records: Iterable[Record], batch_size: int = 64) -> dict[str, list[int]]:
    """VQ code ids of every ``target_image`` of ``records``: path -> list of ``vq.num_codes_per_image`` ints."""
    paths = sorted({str(r["target_image"]) for r in records if r.get("target_image")})
    out: dict[str, list[int]] = {}
    for i in range(0, len(paths), batch_size):
        chunk = paths[i : i + batch_size]
        codes = vq.encode(store.pixel_batch(chunk))
        out.update({p: [int(c) for c in row] for p, row in zip(chunk, codes.tolist(), strict=True)})
    return out


def target_codes_from(codes: Mapping[str, Sequence[int]]) -> Any:
    """The collator's ``target_codes(record)`` over a path -> codes table (a clear error for a missing image)."""

    def lookup(record: Mapping[str, Any]) -> Sequence[int]:
        path = record.get("target_image")
        if not path or path not in codes:
            raise KeyError(f"record {record.get('id')}: no VQ codes for target image {path!r}")
        return codes[str(path)]

    return lookup


#: Batches per window of a length-grouped epoch (Hugging Face's ``group_by_length`` sorts "mega-batches" of 50).
GROUP_WINDOW = 50


def record_length(record: Record) -> int:
    """A cheap stand-in for a record's token count, for grouping by length: the characters of its turns plus a
    fixed 64 per image (only the order within a window matters, not the scale)."""
    text = sum(len(str(t.get("value", ""))) for t in record.get("conversations", ()))
    images = record.get("image")
    count = len(images) if isinstance(images, list) else int(images is not None)
    return text + 64 * count


def grouped_permutation(perm: np.ndarray, lengths: Sequence[int], group: int, rng: np.random.Generator) -> np.ndarray:
    """``perm`` reordered so that each run of ``group`` indices holds records of similar length: every window of
    ``GROUP_WINDOW x group`` consecutive indices is sorted by length (stable), cut into groups, and the groups'
    order within the window shuffled (so long batches do not always come last; a short tail group stays last).
    Each epoch still visits every record once; which records share a batch stays random across windows. Padding
    to the longest record of a batch then costs little: on the embedded default a random batch of 16 pads to ~1.8x
    its real tokens."""
    out = perm.copy()
    span = GROUP_WINDOW * group
    for start in range(0, len(perm), span):
        window = perm[start : start + span]
        window = window[np.argsort([lengths[i] for i in window], kind="stable")]
        chunks = [window[k : k + group] for k in range(0, len(window), group)]
        full = len(window) // group  # a short last chunk (the epoch's tail) stays last: the groups stay aligned
        order = [*rng.permutation(full), *range(full, len(chunks))]
        out[start : start + len(window)] = np.concatenate([chunks[k] for k in order])
    return out


@dataclass
class EpochSampler:
    """Indices into a pool of ``size`` records, epoch after epoch, each epoch a seeded permutation. With
    ``lengths`` (one per record) and ``group`` (the micro-batch), each run of ``group`` indices holds records of
    similar length (:func:`grouped_permutation`); callers must then take multiples of ``group``."""

    size: int
    seed: int
    salt: int = 0
    epoch: int = 0
    position: int = 0
    lengths: Sequence[int] | None = None
    group: int = 1

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError("EpochSampler needs a non-empty pool")
        if self.lengths is not None and len(self.lengths) != self.size:
            raise ValueError(f"EpochSampler: {len(self.lengths)} lengths for a pool of {self.size} records")
        self._order: np.ndarray | None = None
        self._order_epoch = -1

    def order(self, epoch: int) -> np.ndarray:
        if self._order is None or self._order_epoch != epoch:
            rng = np.random.default_rng([self.seed, self.salt, epoch])
            order = rng.permutation(self.size)
            if self.lengths is not None and self.group > 1:
                # the first `lead` indices complete the previous epoch's last batch: group from there on
                lead = (-self.size * epoch) % self.group
                order[lead:] = grouped_permutation(order[lead:], self.lengths, self.group, rng)
            self._order = order
            self._order_epoch = epoch
        return self._order

    def take(self, n: int) -> list[int]:
        """The next ``n`` indices (an epoch boundary continues into the next permutation)."""
        out: list[int] = []
        while len(out) < n:
            order = self.order(self.epoch)
            grab = min(n - len(out), self.size - self.position)
            out += [int(i) for i in order[self.position : self.position + grab]]
            self.position += grab
            if self.position == self.size:
                self.epoch, self.position = self.epoch + 1, 0
        return out

    def state_dict(self) -> dict[str, int]:
        return {"size": self.size, "seed": self.seed, "salt": self.salt, "epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        if int(state["size"]) != self.size or int(state["seed"]) != self.seed:
            raise ValueError(
                f"sampler state is for a pool of {state['size']} records with seed {state['seed']}, this sampler has "
                f"{self.size} with seed {self.seed}: the data or the seed changed since the checkpoint"
            )
        self.epoch, self.position = int(state["epoch"]), int(state["position"])


def task_for_step(mix: Mapping[str, float], *, seed: int, salt: int, step: int) -> str:
    """The task of optimizer step ``step``: drawn with probabilities ``mix`` from a hash of (seed, salt, step)."""
    tasks = [t for t in TASKS if mix.get(t, 0.0) > 0]
    if not tasks:
        raise ValueError(f"the task mix {dict(mix)} gives no task a positive weight")
    weights = np.array([mix[t] for t in tasks], dtype=np.float64)
    u = np.random.default_rng([seed, salt, step, 104729]).random()
    return tasks[int(np.searchsorted(np.cumsum(weights / weights.sum()), u, side="right").clip(0, len(tasks) - 1))]
