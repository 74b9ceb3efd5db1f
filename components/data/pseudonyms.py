"""Keyed pseudonyms for the paths of identified files, and the local map back to them.

Hospitals name folders and files after patients (``SMITH_JOHN/Smith_John_referral.txt``). Masking the name the
header carries misses every other spelling, an unreadable header masks nothing, and a non-DICOM file has no
header at all. So no path from the intake area is ever shown: each component becomes ``p-`` + 12 hex digits of
HMAC-SHA256(key, the component case-folded), keeping a file's extension (``.dcm``, ``.txt``: not PHI, and what a
reader needs to know). The same key gives the same pseudonym on every run and for every spelling that differs
only in case, so messages stay comparable across runs. Components that already are medtune pseudonyms
(``pt-``/``f-``/``p-`` + hex) are left as they are.

The map from pseudonym to original lives beside the key in the state folder's ``secrets/`` (never versioned,
pushed or logged) so that a privacy officer can find the file a message names::

    from components.data.pseudonyms import PathPseudonyms
    names = PathPseudonyms(key, state.secrets / "path_pseudonyms.json")
    shown = names.path("SMITH_JOHN/Smith_John_referral.txt")   # 'p-3f0c.../p-91ab....txt'
    names.save()
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
from pathlib import Path, PurePosixPath

_HEX = 12
_IS_PSEUDONYM = re.compile(r"^(?:pt|f|p)-[0-9a-f]{12,16}(?:\.[A-Za-z0-9]{1,8})?$")
_EXTENSION = re.compile(r"^\.[A-Za-z0-9]{1,8}$")


def component_pseudonym(key: bytes, name: str) -> str:
    """``p-`` + 12 hex digits of HMAC-SHA256(key, name case-folded); a short alphanumeric extension is kept."""
    if _IS_PSEUDONYM.match(name):
        return name
    stem, ext = name, ""
    suffix = PurePosixPath(name).suffix
    if suffix and suffix != name and _EXTENSION.match(suffix):
        stem, ext = name[: -len(suffix)], suffix.lower()
    digest = hmac.new(key, b"path:" + stem.casefold().encode("utf-8"), hashlib.sha256).hexdigest()[:_HEX]
    return f"p-{digest}{ext}"


def path_pseudonym(key: bytes, relative: str) -> str:
    """Every component of a relative path pseudonymised (see :func:`component_pseudonym`)."""
    parts = [p for p in PurePosixPath(relative.replace("\\", "/")).parts if p not in ("", ".")]
    return "/".join(component_pseudonym(key, p) for p in parts)


class PathPseudonyms:
    """Pseudonymise paths and remember the originals in a local map file (written by :meth:`save`, mode 0600)."""

    def __init__(self, key: bytes, map_file: Path | None) -> None:
        self.key = key
        self.map_file = map_file
        self._map: dict[str, str] = {}
        self._dirty = False
        if map_file is not None and map_file.exists():
            try:
                self._map = dict(json.loads(map_file.read_text(encoding="utf-8")))
            except (OSError, ValueError):
                self._map = {}  # a damaged map is rebuilt from the files seen next

    def path(self, relative: str) -> str:
        parts = [p for p in PurePosixPath(relative.replace("\\", "/")).parts if p not in ("", ".")]
        out = []
        for part in parts:
            pseudo = component_pseudonym(self.key, part)
            if pseudo != part and self._map.get(pseudo) != part:
                self._map[pseudo] = part
                self._dirty = True
            out.append(pseudo)
        return "/".join(out)

    def original(self, pseudonym_path: str) -> str:
        """The original path of a pseudonymised one, as far as the map knows it."""
        return "/".join(self._map.get(p, p) for p in pseudonym_path.split("/"))

    def save(self) -> None:
        if not self._dirty or self.map_file is None:
            return
        self.map_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.map_file.with_name(f".{self.map_file.name}.tmp-{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(dict(sorted(self._map.items())), f, indent=1, ensure_ascii=False)
        tmp.replace(self.map_file)
        self._dirty = False
