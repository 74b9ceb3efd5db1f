"""Stable identities for cache keys: hashes of texts and cheap fingerprints of checkpoint folders.

    from components.safety.ids import text_hash, folder_fingerprint
    text_hash("How do I ...?")                      # sha256 hex of the UTF-8 text
    folder_fingerprint("/models/base", "/adapters/v3")   # changes when any file there is rewritten

A cached response is only as right as its key: a SUT's or judge's id must change when its weights change, or a
re-trained model would be served the previous model's answers. Hashing multi-GB weights on every run costs tens of
seconds, so :func:`folder_fingerprint` hashes each file's relative path, size and modification time instead.
"""

from __future__ import annotations

import hashlib
from pathlib import Path


def text_hash(text: str) -> str:
    """SHA-256 hex of the UTF-8 text."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def folder_fingerprint(*paths: str | Path | None, length: int = 16) -> str:
    """A short hash of the listed files/folders (relative path, size, mtime of every file); None entries are skipped."""
    h = hashlib.sha256()
    for raw in paths:
        if raw is None:
            continue
        root = Path(raw)
        if not root.exists():
            raise FileNotFoundError(f"{root}: no such file or folder")
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        h.update(str(root.resolve()).encode() + b"\0")
        for f in files:
            st = f.stat()
            rel = f.name if f == root else f.relative_to(root).as_posix()
            h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:length]
