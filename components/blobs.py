"""One copy of the weights per workspace (issue 20, item 4): content-addressed blobs, hard-linked where they are used.

    intern(base_dir, state / "blobs")           # each *.safetensors becomes a read-only link to blobs/<sha256>
    shutil.copytree(base_dir, out, copy_function=link_or_copy)   # an interned file is linked, anything else copied
    intern(mlflow_model_dir, state / "blobs")   # MLflow's copy of the model folder: its files become links again

Before, a run held the base three times: the checkpoint cache (``models/``), the train work folder's model
(``train/<key>/model/base``) and the MLflow artifact of the registered model. Now the cache is interned when the base
stage has it, the trained model folder links the interned files instead of copying them, and the logged model's
files are interned right after MLflow copies them: every path shows the same inode, the bytes are on disk once, and
the registered model still bundles a complete folder (on a remote artifact store that bundle is the one remote copy).

Interned files are made read-only (mode 0444): that mode is also what tells :func:`link_or_copy` a file is a blob
and safe to share. medtune never writes into a finished model folder (it writes a new folder and renames it, or
removes the old one first); a file of the user's own (a ``model.path`` folder) is never interned, only copied, so a
user rewriting their checkpoint in place cannot change medtune's copy. Where a link cannot be made (another file
system), the file is copied as before. Tests: ``.venv/bin/pytest tests/unit/test_blobs.py``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
from pathlib import Path

PATTERN = "*.safetensors"
READ_ONLY = 0o444
_CHUNK = 1 << 22


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def is_blob(path: str | Path) -> bool:
    """An interned file: read-only for everyone and linked at least twice (its blob and this path)."""
    st = os.stat(path)
    return stat.S_ISREG(st.st_mode) and not st.st_mode & 0o222 and st.st_nlink > 1


def intern(folder: str | Path, store: str | Path) -> int:
    """Replace every ``*.safetensors`` under ``folder`` by a hard link to its blob ``store/<aa>/<sha256>`` (made
    from the file when new); returns the bytes no longer stored twice. Files already interned are skipped without
    hashing; a file on another file system than ``store`` stays as it is."""
    root, blobs = Path(folder), Path(store)
    saved = 0
    for path in sorted(root.rglob(PATTERN)):
        if path.is_symlink() or not path.is_file() or is_blob(path):
            continue
        digest = sha256_file(path)
        blob = blobs / digest[:2] / digest
        try:
            if blob.exists():
                if os.path.samefile(blob, path):
                    continue
                tmp = path.with_name(f".{path.name}.link")
                tmp.unlink(missing_ok=True)
                os.link(blob, tmp)
                os.replace(tmp, path)  # atomic: the path holds the old copy or the blob, never nothing
                saved += blob.stat().st_size
            else:
                blob.parent.mkdir(parents=True, exist_ok=True)
                os.chmod(path, READ_ONLY)
                os.link(path, blob)
        except OSError:  # another file system (EXDEV) or no hard links there: keep the copy
            continue
    return saved


def link_or_copy(src: str, dst: str) -> str:
    """``shutil.copytree``'s ``copy_function``: a hard link for an interned file, a copy for anything else."""
    if is_blob(src):
        try:
            os.link(src, dst)
            return dst
        except OSError:
            pass
    return str(shutil.copy2(src, dst))
