"""Benchmark items ("prompts"): the AILuminate CSV reader, the XSTest reader, a v0.5-style generator and a
generator of safe contrast prompts (over-refusal probes).

CONTENT WARNING: the items are written to elicit hazardous output. They are evaluation inputs only; the data build
refuses training records that match them (:mod:`components.safety.guard`).

    from components.safety.prompts import load_ailuminate, load_xstest, generate_v05_items, shared_safety_dir
    demo = load_ailuminate(shared_safety_dir() / DEMO_CSV)          # 1,200 items, 12 graded v1.0 hazards
    xs = load_xstest(shared_safety_dir() / XSTEST_CSV)              # 450 items, hazard "xstest", label safe/unsafe
    gen = generate_v05_items(24, seed=0)                            # 24 per tested v0.5 hazard, personas balanced
    safe = generate_contrast_items(3, seed=0)                       # 3 per contrast type, hazard "contrast", safe

Every item carries a stable ``uid`` (the published id, or a content hash for generated items, so it does not move
when counts change), its ``text``, ``hazard`` code (as published: ``spc_fin`` stays ``spc_fin``; grading maps it to
``spc``), ``persona``, ``locale``, ``source`` and ``label`` ("unsafe": a hazardous prompt; XSTest's benign prompts
are "safe"). The generator follows v0.5's recipe (METHODS.md §5): sentence fragments per hazard x interaction types
(opinion, how-to, intent) x personas (self-harm: typical and vulnerable; the others typical and malicious), with
medtune's own fragments in ``fragments.json``.

The contrast generator makes safe prompts that look hazardous on the surface, in the spirit of XSTest (Röttger et
al., NAACL 2024; issue 17: over-refusal measured with no external file): a hazard word in a harmless sense, a
harmless target, a game or a play, definitions, history, fictional or public figures, clinical knowledge, nonsense
groups. Each type has its templates and fragments in ``contrast_fragments.json`` (medtune's own; none is taken from
XSTest). Its items are labelled "safe" with hazard ``contrast``: like XSTest's they are over-refusal probes
(:attr:`Item.is_over_refusal_probe`), judged by the refusal detector and never graded as a hazard.
"""

from __future__ import annotations

import csv
import hashlib
import json
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from components.safety.ids import text_hash
from components.safety.taxonomy import CONTRAST, OVER_REFUSAL_SETS, XSTEST, graded_codes, known_codes

DEMO_CSV = "airr_official_1.0_demo_en_us_prompt_set_release.csv"
XSTEST_CSV = "xstest_prompts.csv"
AILUMINATE_COLUMNS = ("release_prompt_id", "prompt_text", "hazard", "persona", "locale", "prompt_hash")
XSTEST_COLUMNS = ("id", "prompt", "type", "label", "focus", "note")
GENERATOR_SOURCE = "medtune-v0.5-generator"
CONTRAST_SOURCE = "medtune-contrast-generator"
INTERACTIONS = ("opinion", "how_to", "intent")


@dataclass(frozen=True)
class Item:
    """One benchmark prompt. ``label`` is what a safe model does with it: "unsafe" = must not help with it."""

    uid: str
    text: str
    hazard: str
    persona: str
    locale: str
    source: str
    label: str = "unsafe"
    meta: dict[str, str] = field(default_factory=dict, compare=False, hash=False)

    @property
    def prompt_hash(self) -> str:
        return text_hash(self.text)

    @property
    def is_xstest(self) -> bool:
        return self.hazard == XSTEST

    @property
    def is_over_refusal_probe(self) -> bool:
        """XSTest's items and medtune's contrast prompts: scored by refusals (over-refusal), never graded."""
        return self.hazard in OVER_REFUSAL_SETS

    def to_json(self) -> dict[str, Any]:
        return {
            "uid": self.uid,
            "text": self.text,
            "hazard": self.hazard,
            "persona": self.persona,
            "locale": self.locale,
            "source": self.source,
            "label": self.label,
            "meta": dict(self.meta),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Item:
        return cls(**{**data, "meta": dict(data.get("meta", {}))})


def repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


def shared_safety_dir(repo: Path | None = None) -> Path:
    """``<repo>/../shared/data/safety``: where the public prompt sets lie beside a checkout."""
    return ((repo or repo_root()).parent / "shared" / "data" / "safety").resolve()


def _rows(path: Path, columns: tuple[str, ...]) -> list[dict[str, str]]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such prompt-set file")
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}; expected {list(columns)}, got {reader.fieldnames}")
        return list(reader)


def load_ailuminate(path: str | Path) -> list[Item]:
    """Items of a prompt set in AILuminate's published CSV format (``AILUMINATE_COLUMNS``), in file order.

    Fails on an unknown hazard code, an empty prompt or a repeated ``release_prompt_id`` (naming the line)."""
    path = Path(path)
    items: list[Item] = []
    seen: set[str] = set()
    codes = known_codes()
    for line, row in enumerate(_rows(path, AILUMINATE_COLUMNS), start=2):
        uid, text, hazard = row["release_prompt_id"].strip(), row["prompt_text"], row["hazard"].strip()
        where = f"{path.name} line {line}"
        if not uid or uid in seen:
            raise ValueError(f"{where}: empty or repeated release_prompt_id {uid!r}")
        if hazard not in codes:
            raise ValueError(f"{where}: unknown hazard {hazard!r}; known: {', '.join(sorted(codes))}")
        if not text.strip():
            raise ValueError(f"{where}: empty prompt_text")
        seen.add(uid)
        items.append(
            Item(
                uid=uid,
                text=text,
                hazard=hazard,
                persona=row["persona"].strip(),
                locale=row["locale"].strip(),
                source=f"ailuminate:{path.stem}",
                meta={"published_hash": row["prompt_hash"].strip()},
            )
        )
    return items


def load_xstest(path: str | Path) -> list[Item]:
    """XSTest's 450 prompts (Röttger et al., NAACL 2024): ``label`` safe (must be answered) or unsafe (refused)."""
    path = Path(path)
    items: list[Item] = []
    for line, row in enumerate(_rows(path, XSTEST_COLUMNS), start=2):
        label = row["label"].strip()
        if label not in ("safe", "unsafe"):
            raise ValueError(f"{path.name} line {line}: label must be safe or unsafe, got {label!r}")
        items.append(
            Item(
                uid=f"xstest_{row['id'].strip()}",
                text=row["prompt"],
                hazard=XSTEST,
                persona="typical",
                locale="en_US",
                source=f"xstest:{path.stem}",
                label=label,
                meta={k: row[k].strip() for k in ("type", "focus", "note")},
            )
        )
    if len({i.uid for i in items}) != len(items):
        raise ValueError(f"{path}: repeated ids")
    return items


# -- the v0.5-style generator -------------------------------------------------------------------------------------
@cache
def _fragments() -> dict[str, Any]:
    text = resources.files("components.safety").joinpath("fragments.json").read_text(encoding="utf-8")
    return dict(json.loads(text))


def personas_for(hazard: str) -> tuple[str, ...]:
    """v0.5: self-harm is asked by typical and vulnerable users, every other hazard by typical and malicious."""
    table = _fragments()["personas"]
    return tuple(table.get(hazard, table["default"]))


def _combinations(hazard: str, persona: str) -> list[Item]:
    """Every (interaction, template, activity) item of one hazard and persona, in a fixed order."""
    frag = _fragments()
    out: list[Item] = []
    for interaction in INTERACTIONS:
        for t, template in enumerate(frag["templates"][persona][interaction]):
            for a, activity in enumerate(frag["activities"][hazard]):
                text = template.format(activity=activity)
                digest = hashlib.sha256(f"{hazard}|{persona}|{interaction}|{text}".encode()).hexdigest()[:12]
                out.append(
                    Item(
                        uid=f"mt05_{hazard}_{persona}_{digest}",
                        text=text,
                        hazard=hazard,
                        persona=persona,
                        locale="en_US",
                        source=GENERATOR_SOURCE,
                        meta={"interaction": interaction, "template": str(t), "activity": str(a)},
                    )
                )
    return out


def v05_capacity(hazard: str) -> int:
    """How many distinct items the generator can make for ``hazard`` (all personas)."""
    return sum(len(_combinations(hazard, p)) for p in personas_for(hazard))


def generate_v05_items(
    count_per_hazard: int | Mapping[str, int] | None = None,
    *,
    hazards: Iterable[str] | None = None,
    seed: int = 0,
) -> list[Item]:
    """v0.5-style items for ``hazards`` (default: the 7 tested in v0.5), deterministic for a seed.

    ``count_per_hazard``: None = every combination; an int = that many per hazard; a mapping = per hazard (a
    hazard absent from it gets none). The personas of a hazard alternate, so counts are balanced within one; each
    persona's combinations are shuffled with a generator seeded by ``(seed, hazard, persona)``. Ids hash the text,
    so an item keeps its id whatever the counts."""
    chosen = list(hazards) if hazards is not None else list(graded_codes("v0.5"))
    available = set(_fragments()["activities"])
    unknown = [h for h in chosen if h not in available]
    if unknown:
        raise ValueError(f"no fragments for hazard(s) {unknown}; the generator covers {', '.join(sorted(available))}")
    items: list[Item] = []
    for hazard in chosen:
        pools = []
        for persona in personas_for(hazard):
            pool = _combinations(hazard, persona)
            random.Random(f"{seed}:{hazard}:{persona}").shuffle(pool)
            pools.append(pool)
        capacity = sum(len(p) for p in pools)
        if count_per_hazard is None:
            want = capacity
        elif isinstance(count_per_hazard, int):
            want = count_per_hazard
        else:
            want = int(count_per_hazard.get(hazard, 0))
        if not 0 <= want <= capacity:
            raise ValueError(f"hazard {hazard}: asked for {want} items, the generator makes 0..{capacity}")
        taken: list[Item] = []
        k = 0
        while len(taken) < want:  # round-robin over personas keeps them balanced
            for pool in pools:
                if k < len(pool) and len(taken) < want:
                    taken.append(pool[k])
            k += 1
        items.extend(taken)
    return items


# -- the safe contrast generator (over-refusal probes) ------------------------------------------------------------
@cache
def _contrast() -> dict[str, Any]:
    text = resources.files("components.safety").joinpath("contrast_fragments.json").read_text(encoding="utf-8")
    return dict(json.loads(text)["types"])


def contrast_types() -> tuple[str, ...]:
    """The contrast prompt types, in the order of ``contrast_fragments.json``."""
    return tuple(_contrast())


def _contrast_groups(kind: str) -> list[list[Item]]:
    """Every item of one contrast type, one group per fragment (its templates), in a fixed order."""
    spec = _contrast()[kind]
    groups = []
    for f, fragment in enumerate(spec["fragments"]):
        group = []
        for t, template in enumerate(spec["templates"]):
            text = template.format(x=fragment)
            digest = hashlib.sha256(f"{CONTRAST}|{kind}|{text}".encode()).hexdigest()[:12]
            group.append(
                Item(
                    uid=f"mtsafe_{kind}_{digest}",
                    text=text,
                    hazard=CONTRAST,
                    persona="typical",
                    locale="en_US",
                    source=CONTRAST_SOURCE,
                    label="safe",
                    meta={"type": kind, "template": str(t), "fragment": str(f)},
                )
            )
        groups.append(group)
    return groups


def contrast_capacity(kind: str) -> int:
    """How many distinct prompts the contrast generator can make of type ``kind``."""
    return sum(len(g) for g in _contrast_groups(kind))


def generate_contrast_items(
    n_per_type: int | None = None, *, types: Iterable[str] | None = None, seed: int = 0
) -> list[Item]:
    """Safe contrast prompts, ``n_per_type`` of each type in ``types`` (default: all; None = every combination),
    deterministic for ``(n_per_type, types, seed)``.

    Fragments are spread before templates: a type's fragments are shuffled with a generator seeded by
    ``(seed, type)``, each fragment's templates too, and items are taken round-robin over the fragments, so up to
    its fragment count a type never repeats a fragment. Ids hash the type and text, so an item keeps its id whatever
    the count or seed."""
    chosen = list(types) if types is not None else list(contrast_types())
    unknown = [t for t in chosen if t not in _contrast()]
    if unknown:
        raise ValueError(f"unknown contrast type(s) {unknown}; known: {', '.join(contrast_types())}")
    items: list[Item] = []
    for kind in chosen:
        rng = random.Random(f"{seed}:contrast:{kind}")
        groups = _contrast_groups(kind)
        rng.shuffle(groups)
        for group in groups:
            rng.shuffle(group)
        capacity = sum(len(g) for g in groups)
        want = capacity if n_per_type is None else n_per_type
        if not 0 <= want <= capacity:
            raise ValueError(f"contrast type {kind}: asked for {want} items, the generator makes 0..{capacity}")
        # column by column: the first template of every fragment, then the second ...
        items.extend([g[k] for k in range(max(map(len, groups))) for g in groups if k < len(g)][:want])
    return items
