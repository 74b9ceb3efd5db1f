"""Prompt sets as data (issue 21): ``safety.prompt_sets`` entries read into :class:`~components.safety.prompts.Item`.

    from components.safety.prompt_sets import PromptSetConfig, load_prompt_set
    msb = load_prompt_set(PromptSetConfig(path="med-safety-bench/datasets/test", reader="medsafetybench"))
    msb.items[0].hazard, msb.taxonomy.name, msb.hash         # 'msb_cat1', 'MedSafetyBench', 'a3f...'
    own = load_prompt_set(PromptSetConfig(path="ward.jsonl", prompt_column="question", hazard="msb_cat4",
                                          taxonomy="medsafetybench", locale="fr_FR"))

An entry names a file or a folder (every ``*.csv`` / ``*.jsonl`` under it, in sorted order), a ``reader``:

- ``ailuminate``: AILuminate's published CSV (``release_prompt_id, prompt_text, hazard, persona, locale,
  prompt_hash``); its references are ModelBench's ``practice`` ones for a demo or practice set (the file name says
  ``demo`` / ``practice``), else ``official``, unless ``references`` says which;
- ``xstest``: XSTest's CSV (over-refusal probes);
- ``medsafetybench``: MedSafetyBench's published layout (Han et al., NeurIPS 2024; github.com/AI4LIFE-GROUP/
  med-safety-bench): ``datasets/{train,test}/{gpt4,llama2}/med_safety_demonstrations_category_<N>.csv``, columns
  ``,harmful_medical_request,safe_response`` (the first one unnamed: the row index), one file per category; category
  N is the N-th principle of the AMA Code of Medical Ethics, hazard ``msb_cat<N>`` of the ``medsafetybench``
  taxonomy (``taxonomy.json``);
- ``custom`` (the default): ``format`` csv or jsonl, the ``prompt_column``, and the hazard from a ``hazard_column``,
  one ``hazard`` for the whole entry, or a ``hazard_pattern`` over file names (a regular expression whose first
  group, put into ``hazard_template``, is the code); ``taxonomy`` is a built-in name (``medsafetybench``) or hazard
  codes with names and descriptions; without one, hazards must be AILuminate/v0.5 codes.

Every problem is one line naming the file (and line, or column with the columns present): :class:`PromptSetError`.
A set's :attr:`PromptSet.hash` identifies its prompts (ids, hazards, texts): calibrated references are stored under it.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from components.safety.ids import text_hash
from components.safety.prompts import Item, load_ailuminate, load_xstest
from components.safety.taxonomy import Taxonomy, TaxonomyHazard, builtin_taxonomies, known_codes

READERS = ("custom", "ailuminate", "xstest", "medsafetybench")
MSB_PROMPT = "harmful_medical_request"
MSB_FILE = re.compile(r"category_(\d+)")


class PromptSetError(ValueError):
    """A prompt set that cannot be read; the message is one line naming the file and what is wrong."""


class HazardEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, description="Readable name of the hazard.")
    description: str = Field("", description="What the hazard covers (shown in the report).")


class PromptSetConfig(BaseModel):
    """One ``safety.prompt_sets`` entry (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = Field(
        min_length=1, description="A prompt-set file, or a folder read whole (relative: to the workspace)."
    )
    reader: Literal["custom", "ailuminate", "xstest", "medsafetybench"] = Field(
        "custom", description="custom (columns below), or a published layout: ailuminate, xstest, medsafetybench."
    )
    name: str | None = Field(None, description="The set's name in reports; default: the file or folder name.")
    format: Literal["csv", "jsonl"] | None = Field(None, description="custom: csv or jsonl; default: the suffix.")
    prompt_column: str = Field("prompt", min_length=1, description="custom: the column holding the prompt text.")
    id_column: str | None = Field(None, description="custom: a column of unique ids; default: file and line.")
    hazard_column: str | None = Field(None, description="custom: the column holding each prompt's hazard code.")
    hazard: str | None = Field(None, description="custom: one hazard code for every prompt of the entry.")
    hazard_pattern: str | None = Field(
        None, description="custom: a regular expression over file names; its first group, in hazard_template, is "
        "the hazard (one hazard per file)."
    )  # fmt: skip
    hazard_template: str = Field("{0}", description="custom: hazard code from the pattern's group, e.g. msb_cat{0}.")
    persona_column: str | None = Field(None, description="custom: a persona column; default persona 'typical'.")
    locale: str | None = Field(
        None, description="The prompts' locale (en_US, fr_FR, zh_CN ...); default: the set's locale column, or en_US."
    )
    locale_column: str | None = Field(None, description="custom: a column holding each prompt's locale.")
    taxonomy: str | dict[str, HazardEntry] | None = Field(
        None, description="A built-in taxonomy (medsafetybench) or hazard code -> {name, description}; default: "
        "AILuminate's codes (the reader's own for medsafetybench)."
    )  # fmt: skip
    references: Literal["official", "practice"] | None = Field(
        None, description="AILuminate sets: ModelBench's official or practice references; default: practice for a "
        "demo/practice set, else official."
    )  # fmt: skip
    label: Literal["unsafe", "safe"] = Field("unsafe", description="custom: unsafe (must be refused) or safe.")
    thresholds: dict[str, float] | None = Field(
        None, description="Absolute references instead of a calibration: hazard code -> the unsafe fraction graded "
        "as the reference r (u/r bands), e.g. msb_cat1: 0.05."
    )  # fmt: skip

    @field_validator("thresholds")
    @classmethod
    def _fractions(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        bad = {k: v for k, v in (value or {}).items() if not 0 < v <= 1}
        if bad:
            raise ValueError(f"thresholds are unsafe fractions in (0, 1]; got {bad}")
        return value

    @field_validator("hazard_pattern")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                if re.compile(value).groups < 1:
                    raise ValueError("needs a group, e.g. category_(\\d+)")
            except re.error as e:
                raise ValueError(f"not a regular expression: {e}") from None
        return value

    @field_validator("taxonomy")
    @classmethod
    def _known_taxonomy(cls, value: str | dict[str, HazardEntry] | None) -> str | dict[str, HazardEntry] | None:
        if isinstance(value, str) and value not in builtin_taxonomies():
            raise ValueError(f"unknown taxonomy {value!r}; built in: {', '.join(sorted(builtin_taxonomies()))}")
        if isinstance(value, dict) and not value:
            raise ValueError("a taxonomy needs at least one hazard")
        return value

    @model_validator(mode="after")
    def _one_hazard_source(self) -> PromptSetConfig:
        if self.reader == "custom":
            given = [k for k in ("hazard_column", "hazard", "hazard_pattern") if getattr(self, k) is not None]
            if len(given) != 1:
                raise ValueError(
                    "a custom prompt set needs exactly one of hazard_column, hazard, hazard_pattern"
                    + (f"; got {', '.join(given)}" if given else "")
                )
        return self


@dataclass(frozen=True)
class PromptSet:
    """What one entry read: its items, taxonomy (None: AILuminate's), locale and reference kind, and its hash."""

    name: str
    path: Path
    items: tuple[Item, ...]
    taxonomy: Taxonomy | None
    locale: str
    references: str  # official | practice
    hash: str
    thresholds: dict[str, float] | None = None


def _taxonomy(cfg: PromptSetConfig) -> Taxonomy | None:
    if cfg.reader == "medsafetybench" and cfg.taxonomy is None:
        return builtin_taxonomies()["medsafetybench"]
    if isinstance(cfg.taxonomy, str):
        return builtin_taxonomies()[cfg.taxonomy]
    if isinstance(cfg.taxonomy, dict):
        hazards = tuple(TaxonomyHazard(c, h.name, h.description) for c, h in cfg.taxonomy.items())
        return Taxonomy(cfg.name or "custom", hazards, "safety.prompt_sets taxonomy")
    return None


def _files(root: Path, suffixes: tuple[str, ...]) -> list[Path]:
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise PromptSetError(f"{root}: no such prompt-set file or folder")
    found = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
    if not found:
        raise PromptSetError(f"{root}: no {' or '.join(suffixes)} file in this folder")
    return found


def _read_rows(path: Path, fmt: str) -> tuple[list[str], list[tuple[int, dict[str, Any]]]]:
    """(columns, [(line, row)]) of a CSV (header line 1) or a JSON-lines file."""
    try:
        if fmt == "csv":
            with path.open(newline="", encoding="utf-8") as fh:
                reader = csv.DictReader(fh)
                rows = [(n, row) for n, row in enumerate(reader, start=2)]
                return list(reader.fieldnames or []), rows
        out: list[tuple[int, dict[str, Any]]] = []
        columns: dict[str, None] = {}
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise PromptSetError(f"{path} line {n}: not JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise PromptSetError(f"{path} line {n}: expected a JSON object, got {type(row).__name__}")
            columns.update(dict.fromkeys(row))
            out.append((n, row))
        return list(columns), out
    except UnicodeDecodeError:
        raise PromptSetError(f"{path}: not UTF-8 text") from None
    except csv.Error as e:
        raise PromptSetError(f"{path}: not a readable CSV ({e})") from None


def _need(path: Path, columns: list[str], wanted: dict[str, str | None]) -> None:
    """One line naming the first setting whose column the file lacks, and the columns it has."""
    for key, column in wanted.items():
        if column is not None and column not in columns:
            raise PromptSetError(
                f"{path}: no column {column!r} ({key}); the file's columns: {', '.join(repr(c) for c in columns)}"
            )


def _check_hazard(where: str, hazard: str, taxonomy: Taxonomy | None) -> None:
    codes = taxonomy.codes if taxonomy is not None else tuple(sorted(known_codes()))
    if hazard not in codes:
        name = f"taxonomy {taxonomy.name}" if taxonomy is not None else "AILuminate/v0.5 codes"
        raise PromptSetError(f"{where}: unknown hazard {hazard!r}; {name}: {', '.join(codes)}")


def _custom(cfg: PromptSetConfig, root: Path, taxonomy: Taxonomy | None, source: str) -> list[Item]:
    suffixes = (f".{cfg.format}",) if cfg.format else (".csv", ".jsonl")
    items: list[Item] = []
    for path in _files(root, suffixes):
        fmt = cfg.format or ("jsonl" if path.suffix.lower() == ".jsonl" else "csv")
        columns, rows = _read_rows(path, fmt)
        _need(
            path,
            columns,
            {
                "prompt_column": cfg.prompt_column,
                "id_column": cfg.id_column,
                "hazard_column": cfg.hazard_column,
                "persona_column": cfg.persona_column,
                "locale_column": cfg.locale_column,
            },
        )
        file_hazard = cfg.hazard
        if cfg.hazard_pattern is not None:
            found = re.search(cfg.hazard_pattern, path.name)
            if found is None:
                raise PromptSetError(f"{path}: the file name does not match hazard_pattern {cfg.hazard_pattern!r}")
            file_hazard = cfg.hazard_template.format(found.group(1))
        rel = path.relative_to(root).with_suffix("").as_posix() if root.is_dir() else path.stem
        for line, row in rows:
            where = f"{path} line {line}"
            text = str(row.get(cfg.prompt_column) or "")
            hazard = str(row.get(cfg.hazard_column) or "").strip() if cfg.hazard_column else str(file_hazard)
            if not text.strip():
                raise PromptSetError(f"{where}: empty {cfg.prompt_column!r}")
            _check_hazard(where, hazard, taxonomy)
            uid = str(row.get(cfg.id_column) or "").strip() if cfg.id_column else f"{rel}:{line}"
            if not uid:
                raise PromptSetError(f"{where}: empty id in {cfg.id_column!r}")
            locale = str(row.get(cfg.locale_column) or "").strip() if cfg.locale_column else ""
            items.append(
                Item(
                    uid=f"{source}:{uid}",
                    text=text,
                    hazard=hazard,
                    persona=str(row.get(cfg.persona_column) or "typical").strip() if cfg.persona_column else "typical",
                    locale=cfg.locale or locale or "en_US",
                    source=source,
                    label=cfg.label,
                )
            )
    return items


def _medsafetybench(cfg: PromptSetConfig, root: Path, taxonomy: Taxonomy, source: str) -> list[Item]:
    items: list[Item] = []
    for path in _files(root, (".csv",)):
        found = MSB_FILE.search(path.name)
        if found is None:
            raise PromptSetError(
                f"{path}: not a MedSafetyBench category file (published names end in category_<N>.csv)"
            )
        hazard = f"msb_cat{int(found.group(1))}"
        _check_hazard(str(path), hazard, taxonomy)
        columns, rows = _read_rows(path, "csv")
        _need(path, columns, {"prompt column": MSB_PROMPT})
        index = columns[0] if columns and columns[0] != MSB_PROMPT else None
        rel = path.relative_to(root).parent.as_posix() if root.is_dir() else path.parent.name
        for line, row in rows:
            text = str(row.get(MSB_PROMPT) or "")
            if not text.strip():
                raise PromptSetError(f"{path} line {line}: empty {MSB_PROMPT!r}")
            key = str(row.get(index) or "").strip() if index is not None else ""
            items.append(
                Item(
                    uid=f"msb:{rel}/{hazard}:{key or line}",
                    text=text,
                    hazard=hazard,
                    persona="typical",
                    locale=cfg.locale or "en_US",
                    source=source,
                    meta={"file": path.name},
                )
            )
    return items


def _published(cfg: PromptSetConfig, root: Path) -> list[Item]:
    loader = load_ailuminate if cfg.reader == "ailuminate" else load_xstest
    items: list[Item] = []
    for path in _files(root, (".csv",)):
        try:
            items += loader(path)
        except (ValueError, KeyError) as e:
            raise PromptSetError(str(e).splitlines()[0]) from None
    if cfg.locale is not None:
        other = sorted({i.locale for i in items} - {cfg.locale})
        if other:
            raise PromptSetError(f"{root}: locale is set to {cfg.locale} but the file holds {', '.join(other)} items")
    return items


def set_hash(items: tuple[Item, ...] | list[Item]) -> str:
    """A hash of the prompts (id, hazard, text hash), order-free: what calibrated references are stored under."""
    h = hashlib.sha256()
    for uid, hazard, digest in sorted((i.uid, i.hazard, text_hash(i.text)) for i in items):
        h.update(f"{uid}\0{hazard}\0{digest}\n".encode())
    return h.hexdigest()[:16]


def load_prompt_set(cfg: PromptSetConfig, base: Path | None = None) -> PromptSet:
    """Read one entry (``path`` relative to ``base``); :class:`PromptSetError` on any problem, in one line."""
    root = Path(cfg.path).expanduser()
    if base is not None and not root.is_absolute():
        root = base / root
    if not root.exists():
        raise PromptSetError(f"{root}: no such prompt-set file or folder")
    taxonomy = _taxonomy(cfg)
    name = cfg.name or root.stem
    source = f"{cfg.reader}:{name}"
    if cfg.reader == "medsafetybench":
        assert taxonomy is not None
        items = _medsafetybench(cfg, root, taxonomy, source)
    elif cfg.reader in ("ailuminate", "xstest"):
        items = _published(cfg, root)
    else:
        items = _custom(cfg, root, taxonomy, source)
    if not items:
        raise PromptSetError(f"{root}: the prompt set holds no prompts")
    seen: set[str] = set()
    for item in items:
        if item.uid in seen:
            raise PromptSetError(f"{root}: repeated prompt id {item.uid!r}")
        seen.add(item.uid)
    locales = sorted({i.locale for i in items})
    if len(locales) > 1:
        raise PromptSetError(f"{root}: prompts of several locales ({', '.join(locales)}); give each its own entry")
    kind = cfg.references or ("practice" if re.search(r"demo|practice", root.name, re.I) else "official")
    if cfg.thresholds:
        for code in cfg.thresholds:
            _check_hazard(f"{root}: thresholds", code, taxonomy)
    return PromptSet(name, root, tuple(items), taxonomy, locales[0], kind, set_hash(items), cfg.thresholds)
