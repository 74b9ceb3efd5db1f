"""Sites for federated runs: by the records' own ``features.site``, or Dirichlet(α) over labels for experiments
(METHODS.md §4: smaller α, more skew). Both return disjoint index lists that cover every record exactly once.

    sites = site_partition(records)                          # {"hospital-a": [0, 3, ...], ...}
    parts = dirichlet_partition(labels, 10, alpha=0.1, seed=0)   # [[...], ... 10 lists]

Dirichlet choice where the paper is silent: for every class, site proportions are drawn from Dir(α·1) and the
class's (shuffled) indices are cut at the cumulative proportions (the usual recipe of Hsu et al. 2019, which
SLoRA follows). A draw that leaves a site with fewer than ``min_size`` records is redrawn, up to ``max_tries``
times, then the call fails naming the sizes (a site with no data cannot train).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np


class PartitionError(ValueError):
    """The records cannot be split into the sites asked for."""


def site_partition(records: Sequence[Mapping[str, Any]], key: str = "site") -> dict[str, list[int]]:
    """Record indices per ``features[key]``, sites in sorted order; a record without a site is an error."""
    sites: dict[str, list[int]] = defaultdict(list)
    for i, record in enumerate(records):
        features = record.get("features") or {}
        site = features.get(key)
        if site in (None, ""):
            raise PartitionError(f"record {record.get('id', i)!r} has no features.{key}: cannot place it in a site")
        sites[str(site)].append(i)
    return {name: sites[name] for name in sorted(sites)}


def dirichlet_partition(
    labels: Sequence[Hashable],
    num_sites: int,
    alpha: float,
    seed: int,
    *,
    min_size: int = 1,
    max_tries: int = 100,
) -> list[list[int]]:
    """``num_sites`` disjoint sorted index lists covering ``range(len(labels))``, label mix per site ~ Dir(α)."""
    if num_sites < 1 or alpha <= 0:
        raise PartitionError(f"need num_sites >= 1 and alpha > 0, got num_sites={num_sites}, alpha={alpha}")
    if len(labels) < num_sites * min_size:
        raise PartitionError(f"{len(labels)} records cannot give {num_sites} sites of at least {min_size}")
    by_class: dict[Hashable, list[int]] = defaultdict(list)
    for i, label in enumerate(labels):
        by_class[label].append(i)
    rng = np.random.default_rng(seed)
    sizes: list[int] = []
    for _ in range(max_tries):
        parts: list[list[int]] = [[] for _ in range(num_sites)]
        for label in sorted(by_class, key=str):
            idx = np.array(by_class[label])
            rng.shuffle(idx)
            share = rng.dirichlet(np.full(num_sites, alpha))
            cuts = (np.cumsum(share)[:-1] * len(idx)).astype(int)
            for site, chunk in enumerate(np.split(idx, cuts)):
                parts[site].extend(int(i) for i in chunk)
        sizes = [len(p) for p in parts]
        if min(sizes) >= min_size:
            return [sorted(p) for p in parts]
    raise PartitionError(
        f"Dirichlet(alpha={alpha}) over {num_sites} sites left a site under {min_size} records in {max_tries} "
        f"draws (last sizes {sizes}); raise alpha, lower num_sites or min_size"
    )
