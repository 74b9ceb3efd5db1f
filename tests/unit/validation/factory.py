"""Tiny VL-Health datasets for the validation tests: real PNG files and records that follow the contract.

``make_dataset(root)`` writes ``groups`` patients (8/1/1 of every 10 in train/val/test), each with one input
image, one high-resolution target and three records (closed VQA, open VQA, super-resolution), so a clean
dataset has split fractions of exactly 0.8/0.1/0.1. Tests mutate the returned records and call
``write_records`` again.
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


def _record(uid: str, image: str, sha: str, group: str, split: str, **extra: Any) -> dict[str, Any]:
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
