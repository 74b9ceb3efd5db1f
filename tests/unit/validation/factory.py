"""Tiny VL-Health datasets for the validation tests: real PNG files and records that follow the contract.

``make_dataset(root)`` writes ``groups`` patients (8/1/1 of every 10 in train/val/test), each with one input
image, one high-resolution target and three records (closed VQA, open VQA, super-resolution), so a clean
dataset has split fractions of exactly 0.8/0.1/0.1. Tests mutate the returned records and call
``write_records`` again. ``add_multi_and_text_only`` appends a two-image, a text-only and a text_to_image record.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


def write_png(path: Path, seed: int, size: int = 16) -> str:
    """A deterministic RGB PNG; returns its sha256."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def split_of(group_index: int) -> str:
    return {8: "val", 9: "test"}.get(group_index % 10, "train")


def _record(uid: str, image: Any, sha: Any, group: str, split: str, **extra: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "id": f"phantom/{uid}",
        "source": "phantom",
        "license": "CC0-1.0",
        "image": image,
        "image_sha256": sha,
        "modality": "CT",
        "body_part": "abdomen",
        "task": "comprehension",
        "kind": "vqa_closed",
        "conversations": [
            {"from": "human", "value": "<image>\nIs there a lesion?"},
            {"from": "gpt", "value": "yes"},
        ],
        "group": group,
        "split": split,
        "features": {"task": "comprehension", "modality": "CT", "site": "a"},
        "meta": {"question_type": "presence"},
    }
    record.update(extra)
    return record


def make_records(root: Path, groups: int = 10, image_size: int = 16) -> list[dict[str, Any]]:
    """Write the images under ``root/images`` and return valid records for them."""
    records = []
    for g in range(groups):
        group, split = f"s{g:03d}", split_of(g)
        image = f"images/{group}/input.png"
        target = f"images/{group}/target.png"
        sha = write_png(root / image, seed=2 * g, size=image_size)
        target_sha = write_png(root / target, seed=2 * g + 1, size=image_size * 2)
        records.append(_record(f"{group}-q1", image, sha, group, split))
        records.append(
            _record(
                f"{group}-q2", image, sha, group, split, kind="vqa_open",
                conversations=[
                    {"from": "human", "value": "<image>\nWhich organ is largest?"},
                    {"from": "gpt", "value": "liver"},
                ],
            )
        )  # fmt: skip
        records.append(
            _record(
                f"{group}-sr", image, sha, group, split, task="generation", kind="super_resolution",
                conversations=[
                    {"from": "human", "value": "<image>\nUpscale this CT image 2x."},
                    {"from": "gpt", "value": "A 2x super-resolved CT image."},
                ],
                target_image=target, target_image_sha256=target_sha,
            )
        )  # fmt: skip
    return records


def add_multi_and_text_only(root: Path, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Append, to group s000 (train), a record with two images (tokens in place), a text-only record and a
    text_to_image record without an input image; returns the list (lines 31, 32, 33 of a 10-group dataset)."""
    first, second = "images/s000/input.png", "images/s000/other.png"
    shas = [sha256(root / first), write_png(root / second, seed=999)]
    records.append(
        _record(
            "s000-cmp", [first, second], shas, "s000", "train", kind="vqa_open",
            conversations=[
                {"from": "human", "value": "Compare <image> with <image>: which is brighter?"},
                {"from": "gpt", "value": "the second"},
            ],
        )
    )  # fmt: skip
    text = {"modality": "other", "kind": "vqa_open", "features": {"task": "comprehension", "modality": "other"}}
    records.append(
        _record(
            "s000-txt", None, None, "s000", "train", **text,
            conversations=[{"from": "human", "value": "What does CT stand for?"},
                           {"from": "gpt", "value": "computed tomography"}],
        )
    )  # fmt: skip
    target = records[2]
    t2i = _record(
        "s000-t2i", None, None, "s000", "train", **text | {"kind": "text_to_image"}, task="generation",
        conversations=[{"from": "human", "value": "Draw an abdominal CT."},
                       {"from": "gpt", "value": "An abdominal CT."}],
        target_image=target["target_image"], target_image_sha256=target["target_image_sha256"],
    )  # fmt: skip
    del t2i["image"], t2i["image_sha256"]  # absent is the same as null
    records.append(t2i)
    return records


def write_records(root: Path, records: list[dict[str, Any] | str]) -> Path:
    """Write records (dicts as JSON, strings verbatim) one per line to ``root/records.jsonl``."""
    path = root / "records.jsonl"
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def make_dataset(root: Path, groups: int = 10, image_size: int = 16) -> list[dict[str, Any]]:
    """A valid dataset folder at ``root``; returns its records (line n+1 holds records[n])."""
    records = make_records(root, groups, image_size)
    write_records(root, records)
    return records
