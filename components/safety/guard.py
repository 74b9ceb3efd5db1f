"""Keep safety prompts out of training data: an index of normalised prompt fingerprints and a matcher.

    from components.safety.guard import generated_prompt_texts, safety_prompt_index, matches_safety_prompt
    index = safety_prompt_index([shared_safety_dir()])          # every *.csv prompt set in the folder
    index = safety_prompt_index([shared_safety_dir()], extra_texts=generated_prompt_texts())  # + medtune's own
    matches_safety_prompt(record_question, index)               # True -> refuse (quarantine) the record

Prompt sets are evaluation data only (issue 8): a model trained on them would be graded on its own training set.
A text matches when, after normalisation (Unicode NFKC, case-folded, ``<image>`` removed, every run of
non-alphanumerics made one space), it **equals** a prompt, or **contains** a whole prompt of at least
``MIN_CONTAINED_WORDS`` words as a contiguous word sequence (a prompt pasted into a longer question). Shorter
prompts (154 of XSTest's, down to 3 words: "What is suicide?"; 13 of the AILuminate demo's) match only exactly, so
common phrases inside ordinary records do not quarantine them.

Fingerprints are ``"<word count>:<sha256[:32]>"`` strings; the word count lets the matcher slide only windows of
lengths that exist in the index. CSV files are read by header: AILuminate's format (``prompt_text``) or XSTest's
(``prompt``); a folder means its ``*.csv`` files.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable
from pathlib import Path

from components.safety.prompts import (
    AILUMINATE_COLUMNS,
    XSTEST_COLUMNS,
    generate_contrast_items,
    generate_v05_items,
    load_ailuminate,
    load_xstest,
)

MIN_CONTAINED_WORDS = 8
_NON_WORD = re.compile(r"[^0-9a-z]+")


class PromptIndex(set[str]):
    """A set of fingerprints that also remembers which window lengths it holds (a plain set works too)."""

    _memo: tuple[int, frozenset[int]] = (-1, frozenset())

    @property
    def lengths(self) -> frozenset[int]:
        if self._memo[0] != len(self):  # recomputed only after the set changed size
            self._memo = (len(self), frozenset(int(f.split(":", 1)[0]) for f in self))
        return self._memo[1]


def normalise(text: str) -> list[str]:
    """The words of ``text`` after NFKC, case folding, dropping ``<image>`` and splitting on non-alphanumerics."""
    folded = unicodedata.normalize("NFKC", text).replace("<image>", " ").casefold()
    return [w for w in _NON_WORD.split(folded) if w]


def fingerprint(words: list[str]) -> str:
    return f"{len(words)}:{hashlib.sha256(' '.join(words).encode('utf-8')).hexdigest()[:32]}"


def _texts(path: Path) -> list[str]:
    with path.open(encoding="utf-8") as fh:
        header = fh.readline()
    columns = {c.strip().strip('"') for c in header.strip().split(",")}
    if set(AILUMINATE_COLUMNS) <= columns:
        return [i.text for i in load_ailuminate(path)]
    if set(XSTEST_COLUMNS) <= columns:
        return [i.text for i in load_xstest(path)]
    raise ValueError(f"{path}: neither AILuminate ({', '.join(AILUMINATE_COLUMNS)}) nor XSTest columns")


def generated_prompt_texts() -> list[str]:
    """Every prompt medtune's generators can make: each v0.5-style combination and each safe contrast prompt, so
    that no count or seed of a safety run can meet its prompts in the training data."""
    return [item.text for item in (*generate_v05_items(), *generate_contrast_items())]


def safety_prompt_index(paths: Iterable[str | Path], extra_texts: Iterable[str] = ()) -> PromptIndex:
    """Fingerprints of every prompt in the CSV files (or folders of them) at ``paths``, plus ``extra_texts``
    (e.g. :func:`generated_prompt_texts`)."""
    index = PromptIndex()
    texts: list[str] = list(extra_texts)
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files = sorted(path.glob("*.csv"))
            if not files:
                raise FileNotFoundError(f"{path}: no *.csv prompt sets in this folder")
        elif path.is_file():
            files = [path]
        else:
            raise FileNotFoundError(f"{path}: no such prompt-set file or folder")
        for f in files:
            texts.extend(_texts(f))
    for text in texts:
        words = normalise(text)
        if words:
            index.add(fingerprint(words))
    return index


def matches_safety_prompt(text: str, index: set[str]) -> bool:
    """Whether ``text`` equals a safety prompt, or contains one of at least ``MIN_CONTAINED_WORDS`` words."""
    words = normalise(text)
    if not words or not index:
        return False
    if fingerprint(words) in index:
        return True
    lengths = index.lengths if isinstance(index, PromptIndex) else {int(f.split(":", 1)[0]) for f in index}
    for n in sorted(length for length in lengths if MIN_CONTAINED_WORDS <= length < len(words)):
        for start in range(len(words) - n + 1):
            if fingerprint(words[start : start + n]) in index:
                return True
    return False
