"""Short name -> factory, with an error that lists the known names (STYLE.md point 3).

from components.safety import SUTS, JUDGES
sut = SUTS.make("refuse_all")            # or SUTS["refuse_all"](**kwargs)
SUTS["nope"]                              # UnknownName: unknown SUT 'nope'; known: comply_all, medtune, ...
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class UnknownName(KeyError):
    """A short name no registry entry has; the message lists the known ones."""

    def __str__(self) -> str:  # KeyError would print the message quoted
        return str(self.args[0]) if self.args else ""


class Registry(Mapping[str, Callable[..., T]], Generic[T]):
    """A read-only mapping of short names to factories, filled by :meth:`register` when a module is imported."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Callable[..., T]] = {}
        self._summaries: dict[str, str] = {}

    def register(self, name: str, factory: Callable[..., T], summary: str) -> None:
        if name in self._entries and self._entries[name] is not factory:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = factory
        self._summaries[name] = summary

    def __getitem__(self, name: str) -> Callable[..., T]:
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "(none)"
            raise UnknownName(f"unknown {self.kind} {name!r}; known: {known}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def make(self, name: str, /, **kwargs: Any) -> T:
        """Build the entry ``name`` with ``kwargs``."""
        return self[name](**kwargs)

    def summaries(self) -> dict[str, str]:
        """name -> one-line summary, for a CLI's help."""
        return dict(sorted(self._summaries.items()))
