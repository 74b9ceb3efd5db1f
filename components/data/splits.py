"""Leakage-free, deterministic train/val/test assignment by group (patient or source image).

Groups, never samples, are assigned. Each group gets a position from a keyed hash of ``(seed, group)``; the
groups are laid out in that order on a line whose length is the total weight (records per group), and each
group goes to the split that holds the middle of its stretch. So record shares follow the ratios even when
groups differ in size, the result depends only on the set of groups (not on input order), and adding a group
moves at most the groups next to a split boundary instead of reshuffling everything.

A group that carries an official split (a source sets it only when the user asked for the official split)
keeps it; a group that appears in two official splits is an error::

    from components.data.splits import assign_splits
    split_of = assign_splits({"pt-1": 12, "pt-2": 3}, (0.8, 0.1, 0.1), seed=0)
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping

from components.data.records import SPLITS
from components.data.sources.base import DataError


def _position(group: str, seed: int) -> bytes:
    return hashlib.sha256(f"medtune-split:{seed}:{group}".encode()).digest()


def check_ratios(ratios: tuple[float, float, float]) -> None:
    if len(ratios) != 3 or any(r < 0 for r in ratios) or abs(sum(ratios) - 1.0) > 1e-6:
        raise ValueError(f"split ratios must be three non-negative numbers summing to 1, got {ratios}")


def assign_splits(weights: Mapping[str, int], ratios: tuple[float, float, float], seed: int) -> dict[str, str]:
    """Map every group in ``weights`` (group -> number of records) to 'train', 'val' or 'test'."""
    check_ratios(ratios)
    order = sorted(weights, key=lambda g: (_position(g, seed), g))
    total = sum(max(1, int(weights[g])) for g in order)
    bounds = (ratios[0], ratios[0] + ratios[1])
    out: dict[str, str] = {}
    done = 0
    for group in order:
        w = max(1, int(weights[group]))
        middle = (done + w / 2) / total if total else 0.0
        out[group] = SPLITS[0] if middle < bounds[0] else SPLITS[1] if middle < bounds[1] else SPLITS[2]
        done += w
    return out


def official_splits(pairs: Iterable[tuple[str, str | None, str]]) -> dict[str, str]:
    """Official split per group from ``(group, split or None, record id)`` triples.

    Raises DataError naming the group and one record from each split when a group spans two splits.
    """
    seen: dict[str, tuple[str, str]] = {}
    for group, split, record_id in pairs:
        if split is None:
            continue
        if split not in SPLITS:
            raise DataError(f"record {record_id}: official split {split!r} is not one of {SPLITS}")
        first = seen.setdefault(group, (split, record_id))
        if first[0] != split:
            raise DataError(
                f"group {group!r} lies in two official splits: {first[0]!r} (record {first[1]}) and "
                f"{split!r} (record {record_id}); a patient or image must stay in one split"
            )
    return {g: s for g, (s, _) in seen.items()}


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            lo, hi = sorted((ra, rb))
            self.parent[hi] = lo


def split_groups(
    group_images: Mapping[str, Iterable[str]],
    weights: Mapping[str, int],
    official: Mapping[str, str],
    ratios: tuple[float, float, float],
    seed: int,
) -> tuple[dict[str, str], int]:
    """Split groups so that neither a group nor an image (by content hash) spans two splits.

    Groups that share an image are joined into one component and split together. A component with an
    official split takes it; components whose groups disagree on official splits keep each group's own
    (counted and returned as the second value, for the build report). Returns (split per group, conflicts).
    """
    uf = _UnionFind()
    by_image: dict[str, str] = {}
    for group in sorted(group_images):
        uf.find(group)
        for image in group_images[group]:
            other = by_image.setdefault(image, group)
            if other != group:
                uf.union(other, group)
    members: dict[str, list[str]] = {}
    for group in sorted(group_images):
        members.setdefault(uf.find(group), []).append(group)
    out: dict[str, str] = {}
    free: dict[str, int] = {}
    conflicts = 0
    for root, groups in members.items():
        offs = {official[g] for g in groups if g in official}
        if not offs:
            free[root] = sum(weights.get(g, 1) for g in groups)
        elif len(offs) == 1:
            out.update({g: next(iter(offs)) for g in groups})
        else:
            conflicts += 1
            fallback = sorted(offs)[0]
            out.update({g: official.get(g, fallback) for g in groups})
    for root, split in assign_splits(free, ratios, seed).items():
        out.update({g: split for g in members[root]})
    return out, conflicts
