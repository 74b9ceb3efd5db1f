"""Group splits: deterministic, ratios respected, stable when a group is added, official splits honoured.

.venv/bin/pytest tests/unit/data/test_splits.py -q
"""

from __future__ import annotations

import random
from collections import Counter

import pytest

from components.data.sources import DataError
from components.data.splits import assign_splits, official_splits, split_groups

RATIOS = (0.8, 0.1, 0.1)


def groups(n: int) -> dict[str, int]:
    return {f"pt-{i:05d}": 1 for i in range(n)}


def test_deterministic_and_independent_of_input_order() -> None:
    weights = groups(300)
    shuffled = list(weights.items())
    random.Random(1).shuffle(shuffled)
    assert assign_splits(weights, RATIOS, 0) == assign_splits(dict(shuffled), RATIOS, 0)
    assert assign_splits(weights, RATIOS, 0) != assign_splits(weights, RATIOS, 1)


@pytest.mark.parametrize("ratios", [(0.8, 0.1, 0.1), (0.6, 0.2, 0.2), (1.0, 0.0, 0.0), (0.5, 0.0, 0.5)])
def test_ratios_respected(ratios: tuple[float, float, float]) -> None:
    shares = Counter(assign_splits(groups(1000), ratios, 3).values())
    for split, ratio in zip(("train", "val", "test"), ratios, strict=True):
        assert abs(shares[split] / 1000 - ratio) <= 0.005


def test_record_shares_follow_ratios_with_uneven_groups() -> None:
    rng = random.Random(0)
    weights = {f"g{i}": rng.choice([1, 3, 30]) for i in range(200)}
    split = assign_splits(weights, RATIOS, 0)
    total = sum(weights.values())
    records = Counter()
    for g, w in weights.items():
        records[split[g]] += w
    for name, ratio in zip(("train", "val", "test"), RATIOS, strict=True):
        assert abs(records[name] / total - ratio) < 0.03


def test_adding_a_group_moves_few_others() -> None:
    before = assign_splits(groups(500), RATIOS, 0)
    after = assign_splits({**groups(500), "pt-new": 1}, RATIOS, 0)
    moved = [g for g in before if before[g] != after[g]]
    assert len(moved) <= 3


def test_bad_ratios_refused() -> None:
    with pytest.raises(ValueError, match="sum"):
        assign_splits(groups(3), (0.5, 0.2, 0.2), 0)


def test_official_splits_kept_and_conflicts_named() -> None:
    pairs = [("a", "train", "s/1"), ("a", None, "s/2"), ("b", "test", "s/3")]
    assert official_splits(pairs) == {"a": "train", "b": "test"}
    with pytest.raises(DataError) as e:
        official_splits([*pairs, ("a", "test", "s/9")])
    assert "'a'" in str(e.value) and "s/1" in str(e.value) and "s/9" in str(e.value)
    with pytest.raises(DataError, match="holdout"):
        official_splits([("a", "holdout", "s/1")])


def test_groups_sharing_an_image_split_together() -> None:
    images = {f"g{i}": {f"img{i}"} for i in range(100)}
    images["g1"] = {"img1", "shared"}
    images["g2"] = {"img2", "shared"}
    images["g3"] = {"img3", "img2"}  # a chain: g1 - g2 - g3
    split, conflicts = split_groups(images, {g: 1 for g in images}, {}, RATIOS, 0)
    assert split["g1"] == split["g2"] == split["g3"] and conflicts == 0
    official = {"g1": "test"}
    split, _ = split_groups(images, {g: 1 for g in images}, official, RATIOS, 0)
    assert split["g1"] == split["g2"] == split["g3"] == "test"
    split, conflicts = split_groups(images, {g: 1 for g in images}, {"g1": "test", "g3": "train"}, RATIOS, 0)
    assert conflicts == 1 and split["g1"] == "test" and split["g3"] == "train"  # official splits win, counted
