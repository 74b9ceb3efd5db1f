"""The hazard taxonomies of MLCommons AI Safety v0.5 and AILuminate v1.0, read from ``taxonomy.json`` (METHODS.md §5).

Nothing to run; import it::

    from components.safety.taxonomy import VERSIONS, hazards, graded_hazard, hazard_name
    [h.code for h in hazards("v0.5") if h.tested]   # ['vcr', 'nvc', 'scr', 'cae', 'cbr', 'ssh', 'hat']
    graded_hazard("spc_fin", "v1.0")                # 'spc'   (sub-hazards are graded as their parent)
    graded_hazard("cse", "v0.5")                    # 'cae'   (the same hazard under v0.5's code)
    graded_hazard("ipv", "v0.5")                    # None    (not tested in v0.5)

Each version keeps its own codes (v0.5's ``cae`` is v1.0's ``cse``); ``equivalents`` in the JSON pairs them, so an
item written for one version can be graded under the other's bands. ``xstest`` and ``contrast`` are not hazards:
they mark the over-refusal probes (XSTest's items; medtune's own safe contrast prompts), scored apart from the grades.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

VERSIONS = ("v0.5", "v1.0")
XSTEST = "xstest"
CONTRAST = "contrast"  # medtune's generated safe contrast prompts (components.safety.prompts.generate_contrast_items)
OVER_REFUSAL_SETS = (XSTEST, CONTRAST)  # the "hazard" codes of over-refusal probes: refusal-detected, never graded


@dataclass(frozen=True)
class Hazard:
    """One hazard category of one benchmark version."""

    code: str
    name: str
    version: str
    tested: bool
    sub_hazards: tuple[tuple[str, str], ...] = ()  # (code, name) of published sub-hazards, graded as this one


@cache
def _data() -> dict[str, Any]:
    text = resources.files("components.safety").joinpath("taxonomy.json").read_text(encoding="utf-8")
    return dict(json.loads(text))


def check_version(version: str) -> str:
    if version not in VERSIONS:
        raise ValueError(f"unknown benchmark version {version!r}; known: {', '.join(VERSIONS)}")
    return version


@cache
def hazards(version: str) -> tuple[Hazard, ...]:
    """Every hazard of ``version`` in the published order (tested and untested)."""
    raw = _data()["versions"][check_version(version)]["hazards"]
    return tuple(
        Hazard(
            code=h["code"],
            name=h["name"],
            version=version,
            tested=bool(h["tested"]),
            sub_hazards=tuple(sorted(h.get("sub_hazards", {}).items())),
        )
        for h in raw
    )


def graded_codes(version: str) -> tuple[str, ...]:
    return tuple(h.code for h in hazards(version) if h.tested)


@cache
def _lookup() -> dict[str, dict[str, Hazard]]:
    """version -> code (hazard or sub-hazard) -> the hazard it is graded as."""
    table: dict[str, dict[str, Hazard]] = {}
    for version in VERSIONS:
        codes: dict[str, Hazard] = {}
        for h in hazards(version):
            codes[h.code] = h
            for sub, _ in h.sub_hazards:
                codes[sub] = h
        table[version] = codes
    return table


@cache
def _equivalent() -> dict[tuple[str, str], str]:
    """(target version, code of the other version) -> code in the target version."""
    out: dict[tuple[str, str], str] = {}
    for pair in _data()["equivalents"]["pairs"]:
        out[("v1.0", pair["v0.5"])] = pair["v1.0"]
        out[("v0.5", pair["v1.0"])] = pair["v0.5"]
    return out


def graded_hazard(code: str, version: str) -> str | None:
    """The ``version`` hazard an item of hazard ``code`` is graded under, or None when ``version`` does not test it.

    ``code`` may be a hazard or sub-hazard code of either version; a code of the same version wins over an
    equivalent of the other one."""
    check_version(version)
    own = _lookup()[version].get(code)
    if own is None:
        other = "v0.5" if version == "v1.0" else "v1.0"
        parent = _lookup()[other].get(code)
        mapped = _equivalent().get((version, parent.code)) if parent is not None else None
        own = _lookup()[version].get(mapped) if mapped is not None else None
    return own.code if own is not None and own.tested else None


@dataclass(frozen=True)
class TaxonomyHazard:
    code: str
    name: str
    description: str = ""


@dataclass(frozen=True)
class Taxonomy:
    """The hazards of a prompt set outside AILuminate's taxonomy (MedSafetyBench's 9 categories, a custom set's)."""

    name: str
    hazards: tuple[TaxonomyHazard, ...]
    source: str = ""
    medical: bool = False

    @property
    def codes(self) -> tuple[str, ...]:
        return tuple(h.code for h in self.hazards)

    def names(self) -> dict[str, str]:
        return {h.code: h.name for h in self.hazards}


@cache
def builtin_taxonomies() -> dict[str, Taxonomy]:
    """name -> taxonomy, from ``taxonomy.json``'s ``taxonomies`` (``medsafetybench``)."""
    out = {}
    for key, raw in _data().get("taxonomies", {}).items():
        hazards = tuple(TaxonomyHazard(h["code"], h["name"], h.get("description", "")) for h in raw["hazards"])
        out[key] = Taxonomy(str(raw.get("name", key)), hazards, str(raw.get("source", "")), bool(raw.get("medical")))
    return out


def medical_codes() -> frozenset[str]:
    """The hazard codes of every built-in medical taxonomy (the promotion policy's ``medical`` gates)."""
    return frozenset(c for t in builtin_taxonomies().values() if t.medical for c in t.codes)


def hazard_name(code: str) -> str:
    """A readable name for any hazard or sub-hazard code (the code itself when unknown)."""
    for tax in builtin_taxonomies().values():
        for entry in tax.hazards:
            if entry.code == code:
                return entry.name
    if code == XSTEST:
        return "XSTest (over-refusal)"
    if code == CONTRAST:
        return "medtune contrast prompts (over-refusal)"
    for version in VERSIONS:
        for h in hazards(version):
            if h.code == code:
                return h.name
            for sub, name in h.sub_hazards:
                if sub == code:
                    return name
    return code


def known_codes() -> set[str]:
    """Every hazard and sub-hazard code of both versions."""
    return {code for version in VERSIONS for code in _lookup()[version]}


def source() -> str:
    return str(_data()["source"])
