"""The one copy of the weights (issue 20, item 4): interning turns equal *.safetensors files into links to one
read-only blob; a copy of an interned folder links, a copy of anything else copies."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from components.blobs import intern, is_blob, link_or_copy, sha256_file


def _folder(root: Path, payload: bytes) -> Path:
    root.mkdir(parents=True)
    (root / "model.safetensors").write_bytes(payload)
    (root / "config.json").write_text("{}")
    return root


def test_equal_files_end_as_one_read_only_inode(tmp_path: Path) -> None:
    store = tmp_path / "blobs"
    a = _folder(tmp_path / "a", b"weights" * 1000)
    b = _folder(tmp_path / "b", b"weights" * 1000)
    other = _folder(tmp_path / "c", b"others!" * 1000)
    assert intern(a, store) == 0  # the first copy becomes the blob
    assert intern(b, store) == 7000  # the second is replaced by a link to it
    assert intern(other, store) == 0
    fa, fb, fc = (d / "model.safetensors" for d in (a, b, other))
    assert os.path.samefile(fa, fb) and not os.path.samefile(fa, fc)
    assert fb.read_bytes() == b"weights" * 1000 and fc.read_bytes() == b"others!" * 1000
    blob = store / sha256_file(fa)[:2] / sha256_file(fa)
    assert os.path.samefile(blob, fa) and is_blob(fa) and not fa.stat().st_mode & 0o222
    assert not is_blob(a / "config.json")  # only weights are interned
    assert intern(b, store) == 0  # a second pass changes nothing


def test_copying_an_interned_folder_links_its_weights_only(tmp_path: Path) -> None:
    base = _folder(tmp_path / "base", b"base" * 500)
    user = _folder(tmp_path / "user", b"user" * 500)
    intern(base, tmp_path / "blobs")
    shutil.copytree(base, tmp_path / "copy", copy_function=link_or_copy)
    shutil.copytree(user, tmp_path / "ucopy", copy_function=link_or_copy)
    assert os.path.samefile(base / "model.safetensors", tmp_path / "copy" / "model.safetensors")
    assert not os.path.samefile(base / "config.json", tmp_path / "copy" / "config.json")
    # a user's own (writable) checkpoint is copied: rewriting it in place cannot change medtune's copy
    assert not os.path.samefile(user / "model.safetensors", tmp_path / "ucopy" / "model.safetensors")
