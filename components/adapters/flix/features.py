"""How each example's feature values reach the FLix layers: one per-call state, read by every layer (METHODS.md §3).

A FLix forward needs, for every example of the batch, the values of its features (``{"task": "comprehension",
"modality": "CT"}``). They are handed over in one of two ways, both setting the same per-call state:

- as a keyword of the model call, ``model(input_ids=..., flix_features=[{...}, {...}])``: a forward pre-hook that
  :class:`~components.adapters.flix.model.FLixModel` puts on the wrapped model takes the keyword out (so the
  transformers model never sees it) and keeps the features for the duration of that call;
- around several calls that share one batch, e.g. a decoding loop with a KV cache::

      from components.adapters.flix import use_features
      with use_features([record["features"] for record in chunk]):
          out = greedy_decode(model, ...)        # every LM call of the loop sees the same features

The state lives in a :class:`contextvars.ContextVar`, so two threads (or asyncio tasks) running forwards at the
same time each see their own batch; nested calls restore the outer batch on exit. A FLix layer that runs with no
features set raises :class:`FeaturesMissingError` instead of silently running the base model.

Choices where METHODS.md §3 is silent:

- **Missing or unknown values.** An example whose value of a feature is missing (absent key or ``None``) or not in
  the adapter's vocabulary gets no contribution from that feature; its other features still apply (the paper's
  motivation for feature dropout). Each such (feature, value) is logged once per process, at WARNING, on the
  ``components.adapters.flix`` logger. Training and inference behave the same.
- **Feature dropout** is drawn once per forward and adapter, per example and per feature (a Bernoulli(p) drop of
  that feature's whole contribution), and shared by every layer of the model: dropping a feature means the example
  is seen as not having it. Kept features are *not* rescaled by 1 / (1 - p): at inference an example has all its
  features, and a missing one should look like a dropped one did in training. All features of an example may be
  dropped at once (it then trains nothing, like a drop of every adapter).
- **Gradient checkpointing** is not supported: it recomputes the forward during backward, after the call has
  ended, so with the ``flix_features=`` keyword the recomputation raises :class:`FeaturesMissingError` (loudly,
  never silently).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch
from torch import Tensor

#: The keyword that carries the per-example features into a model call (``model(..., flix_features=rows)``).
FEATURES_KWARG = "flix_features"
LOGGER = logging.getLogger("components.adapters.flix")
_CURRENT: ContextVar[FeatureBatch | None] = ContextVar("flix_features", default=None)
_WARNED: set[tuple[str, str]] = set()
_WARNED_LOCK = threading.Lock()


class FeaturesMissingError(RuntimeError):
    """A FLix layer ran without per-example features (no ``flix_features=`` keyword, no ``use_features`` block)."""


@dataclass(frozen=True)
class FeatureSpec:
    """The vocabulary of one FLix adapter: feature names in order, each with its values in order.

    Rows of the concatenated A (and columns of B) are laid out feature by feature, value by value: value ``j`` of
    feature ``f`` owns the rank rows ``[(offsets[f] + j) * r, (offsets[f] + j + 1) * r)``.
    """

    names: tuple[str, ...]
    values: tuple[tuple[str, ...], ...]

    @classmethod
    def from_mapping(cls, features: Mapping[str, Sequence[str]]) -> FeatureSpec:
        return cls(tuple(features), tuple(tuple(str(v) for v in values) for values in features.values()))

    def __post_init__(self) -> None:
        if not self.names:
            raise ValueError("a FLix adapter needs at least one feature")
        if len(self.names) != len(self.values):
            raise ValueError(f"{len(self.names)} feature names but {len(self.values)} value lists")
        for name, values in zip(self.names, self.values, strict=True):
            if not values:
                raise ValueError(f"feature {name!r} has no values")
            if len(set(values)) != len(values):
                raise ValueError(f"feature {name!r} lists a value twice: {list(values)}")

    @property
    def num_values(self) -> int:
        """V: the number of (feature, value) adapters, i.e. the summed rank is V x r."""
        return sum(len(v) for v in self.values)

    @cached_property
    def offsets(self) -> tuple[int, ...]:
        out, start = [], 0
        for values in self.values:
            out.append(start)
            start += len(values)
        return tuple(out)

    @cached_property
    def _index(self) -> tuple[dict[str, int], ...]:
        return tuple({v: j for j, v in enumerate(values)} for values in self.values)

    @cached_property
    def value_feature(self) -> Tensor:
        """(V,) long: the feature index of every value column."""
        return torch.tensor([f for f, values in enumerate(self.values) for _ in values], dtype=torch.long)

    def indicator(self, rows: Sequence[Mapping[str, Any]]) -> Tensor:
        """(B, V) float32 0/1: 1 where example b has value v; missing or unknown values are logged once each."""
        out = torch.zeros(len(rows), self.num_values, dtype=torch.float32)
        for b, row in enumerate(rows):
            for f, name in enumerate(self.names):
                raw = row.get(name)
                j = None if raw is None else self._index[f].get(str(raw))
                if j is None:
                    _warn_once(name, raw, self.values[f])
                    continue
                out[b, self.offsets[f] + j] = 1.0
        return out


def _warn_once(name: str, value: Any, known: Sequence[str]) -> None:
    key = (name, "<missing>" if value is None else str(value))
    with _WARNED_LOCK:
        if key in _WARNED:
            return
        _WARNED.add(key)
    if value is None:
        LOGGER.warning("FLix: examples without feature %r use their other features only", name)
    else:
        LOGGER.warning(
            "FLix: value %r of feature %r is not in the adapter's vocabulary (%s); those examples use their other "
            "features only",
            str(value),
            name,
            ", ".join(known),
        )


class FeatureBatch:
    """The features of one batch, and the per-adapter masks every layer of one forward shares.

    ``kept(adapter)`` is the (B, F) 0/1 feature-dropout draw of that adapter in this call (all ones outside
    training), for tests and diagnostics."""

    def __init__(self, rows: Sequence[Mapping[str, Any] | None]) -> None:
        if isinstance(rows, (Mapping, str)) or not isinstance(rows, Sequence):
            raise TypeError(f"{FEATURES_KWARG} must be a list with one mapping per example, got {type(rows).__name__}")
        if not rows:
            raise ValueError(f"{FEATURES_KWARG} is empty: give one mapping of feature values per example")
        bad = [i for i, row in enumerate(rows) if row is not None and not isinstance(row, Mapping)]
        if bad:
            raise TypeError(f"{FEATURES_KWARG}[{bad[0]}] is a {type(rows[bad[0]]).__name__}, expected a mapping")
        self.rows: list[Mapping[str, Any]] = [row or {} for row in rows]
        self._kept: dict[tuple[str, FeatureSpec, bool, float], Tensor] = {}
        self._indicator: dict[tuple[str, FeatureSpec, bool, float], Tensor] = {}
        self._weights: dict[tuple[Any, ...], Tensor] = {}

    def __len__(self) -> int:
        return len(self.rows)

    def kept(self, adapter: str) -> Tensor:
        found = [v for (name, *_), v in self._kept.items() if name == adapter]
        if not found:
            raise KeyError(f"adapter {adapter!r} did not run in this call")
        return found[-1]

    def _mask(self, adapter: str, spec: FeatureSpec, training: bool, dropout: float) -> Tensor:
        key = (adapter, spec, training, dropout)
        mask = self._indicator.get(key)
        if mask is None:
            mask = spec.indicator(self.rows)
            keep = torch.ones(len(self.rows), len(spec.names))
            if training and dropout > 0.0:
                keep = (torch.rand(len(self.rows), len(spec.names)) >= dropout).float()
                mask = mask * keep[:, spec.value_feature]
            self._kept[key] = keep
            self._indicator[key] = mask
        return mask

    def weights(
        self,
        adapter: str,
        spec: FeatureSpec,
        scales: tuple[float, ...],
        *,
        training: bool,
        dropout: float,
        batch: int,
        device: torch.device,
        dtype: torch.dtype,
    ) -> Tensor:
        """(B, V) per-example weight of every value's adapter: its feature's scale where the example has the value
        (and kept the feature), else 0. Computed once per call and shared by the layers that ask alike."""
        if batch != len(self.rows):
            raise ValueError(
                f"the layer sees a batch of {batch} examples but {FEATURES_KWARG} has {len(self.rows)} rows; give "
                "one mapping of feature values per example, in batch order"
            )
        key = (adapter, spec, training, dropout, scales, device, dtype)
        out = self._weights.get(key)
        if out is None:
            per_value = torch.tensor(scales, dtype=torch.float32)[spec.value_feature]
            out = (self._mask(adapter, spec, training, dropout) * per_value).to(device=device, dtype=dtype)
            self._weights[key] = out
        return out


def feature_vocabulary(records: Iterable[Mapping[str, Any]], names: Sequence[str]) -> dict[str, list[str]]:
    """Feature name -> the sorted distinct values that ``records`` (dicts with a ``features`` mapping) carry: the
    vocabulary of a FLix adapter trained on them. A name no record carries is an error naming it."""
    values: dict[str, set[str]] = {name: set() for name in names}
    for record in records:
        features = record.get("features") or {}
        for name in names:
            if features.get(name) is not None:
                values[name].add(str(features[name]))
    empty = [name for name, found in values.items() if not found]
    if empty:
        raise ValueError(
            f"FLix features {empty}: no training record carries a value for them (records' features hold e.g. task, "
            "modality, body_part, site); choose features the data has"
        )
    return {name: sorted(found) for name, found in values.items()}


@contextmanager
def use_features(rows: Sequence[Mapping[str, Any] | None]) -> Iterator[FeatureBatch]:
    """Every FLix layer that runs inside the block (in this thread or task) uses these per-example features."""
    batch = FeatureBatch(rows)
    token = _CURRENT.set(batch)
    try:
        yield batch
    finally:
        _CURRENT.reset(token)


def current_features(adapter: str) -> FeatureBatch:
    """The features of the running call, or :class:`FeaturesMissingError` naming both ways to give them."""
    batch = _CURRENT.get()
    if batch is None:
        raise FeaturesMissingError(
            f"FLix adapter {adapter!r} needs each example's feature values: call the model with "
            f"{FEATURES_KWARG}=[{{'task': ..., 'modality': ...}}, ...] (one mapping per example) or run it inside "
            "`with components.adapters.flix.use_features(rows):`"
        )
    return batch


# The forward hooks' tokens, innermost last: a tuple in a ContextVar, so each thread (or task) keeps its own stack
# and a model holds no per-thread state (it stays deep-copyable and picklable).
_CALLS: ContextVar[tuple[Any, ...]] = ContextVar("flix_calls", default=())


def enter_call(rows: Sequence[Mapping[str, Any] | None] | None) -> None:
    """Start a model call (the forward pre-hook): its features, or ``None`` to keep the enclosing ones."""
    stack = _CALLS.get()
    _CALLS.set((*stack, None))  # first, so exit_call pops this call's entry even if the features are refused
    if rows is not None:
        _CALLS.set((*stack, _CURRENT.set(FeatureBatch(rows))))


def exit_call() -> None:
    """End the innermost model call (the forward hook, which runs even when the forward raised)."""
    stack = _CALLS.get()
    if stack:
        _CALLS.set(stack[:-1])
        if stack[-1] is not None:
            _CURRENT.reset(stack[-1])
