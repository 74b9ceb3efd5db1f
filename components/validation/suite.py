"""The VL-Health validation suite, as code (issue 3, item 5).

Each :class:`Check` is one Great Expectations 1.x expectation over the frame that
:func:`components.validation.frame.load_records_frame` builds, plus what medtune needs to report it: a short
key, a sentence a person understands, and which ``*_detail`` column explains a failing row. The checks cover:
parseable lines, schema and types, allowed values, unique ids, images that exist, decode and match their
recorded hash (every image of a row: a record has zero, one or several, issue 16), ``image_sha256`` in the
shape of ``image``, non-empty question and answer, ``<image>`` token count and placement, split ratios within
tolerance, zero group leakage, no image (by hash) in two splits, no PHI pattern, generation records with an
input image (unless text_to_image) and a target image, and a minimum row count.

Split ratios are column means of 0/1 split indicators (``is_train`` ...), so the expectation's observed value
*is* the fraction of records in that split. Only records medtune split itself count: a record that keeps its
source's official split (``meta.official_split``, SLAKE's 0.6994 train, BreastMNIST's 0.7) is not held to the
configured ratios; when every record does, the ratio expectations look at ``official_<split>`` with bounds
0..1, so they pass and still show the observed fraction (issue 18).

Build and inspect the suite without running it::

    from components.validation.suite import build_checks, build_suite
    checks = build_checks(split_ratios=(0.8, 0.1, 0.1), split_tolerance=0.1, min_records=1)
    suite = build_suite(checks)          # a gx.ExpectationSuite (imports great_expectations)
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from components.data.records import KINDS, MODALITIES, SPLITS, TASKS

if TYPE_CHECKING:
    from great_expectations import ExpectationSuite

SUITE_NAME = "vlhealth_records"
#: The key under an expectation's ``meta`` that names its :class:`Check`.
META_KEY = "medtune_check"
ID_REGEX = r"^[^/\s]+/\S+$"
#: One hash, or the JSON text of a list of two or more (how the frame writes a list); a null one is not checked.
SHA256_REGEX = r'^(?:[0-9a-f]{64}|\["[0-9a-f]{64}"(?:, "[0-9a-f]{64}")+\])$'


@dataclass(frozen=True)
class Check:
    """One expectation and how to report it."""

    key: str  # short, stable name (used in reports and tests)
    description: str  # what must hold, in plain words
    expectation: str  # class name under ``gx.expectations``
    kwargs: dict[str, Any] = field(default_factory=dict)
    detail_column: str | None = None  # frame column that says why a row failed (shown instead of the raw value)
    note: bool = False  # passes by construction; the report shows its observed value as a note

    @property
    def column(self) -> str | None:
        return self.kwargs.get("column")


def _in_set(key: str, column: str, values: list[Any], description: str, detail: str | None = None) -> Check:
    return Check(key, description, "ExpectColumnValuesToBeInSet", {"column": column, "value_set": values}, detail)


def _no_text(key: str, column: str, description: str) -> Check:
    return Check(key, description, "ExpectColumnValueLengthsToEqual", {"column": column, "value": 0})


#: Ratio bounds are rounded to this many decimals: 0.8 - 0.1 is 0.7000000000000001 in floating point, and a
#: split of exactly 70 % (BreastMNIST's official one) must pass (issue 18).
BOUND_DECIMALS = 9


def _split_ratio_checks(
    split_ratios: tuple[float, float, float], tolerance: float, official_records: int, split_records: int | None
) -> list[Check]:
    checks = []
    for split, ratio in zip(SPLITS, split_ratios, strict=True):
        low = round(max(0.0, ratio - tolerance), BOUND_DECIMALS)
        high = round(min(1.0, ratio + tolerance), BOUND_DECIMALS)
        wanted = f"{ratio:g} +/- {tolerance:g} (between {low:g} and {high:g})"
        note = bool(official_records) and split_records == 0
        if note:
            description = (f"every record keeps its source's official split: the fraction in {split} is shown, "
                           f"not held to {wanted}")  # fmt: skip
            kwargs: dict[str, Any] = {"column": f"official_{split}", "min_value": 0.0, "max_value": 1.0}
        else:
            description = f"fraction of records in {split} is {wanted}"
            if official_records:
                description += f"; {official_records} records with their source's official split are not counted"
            kwargs = {"column": f"is_{split}", "min_value": low, "max_value": high}
        checks.append(Check(f"split_ratio_{split}", description, "ExpectColumnMeanToBeBetween", kwargs, note=note))
    return checks


def build_checks(
    *,
    split_ratios: tuple[float, float, float],
    split_tolerance: float,
    min_records: int,
    official_records: int = 0,
    split_records: int | None = None,
) -> list[Check]:
    """The checks in report order. Ratios are per split (train, val, test); tolerance is absolute.

    ``official_records``: how many records keep their source's official split (left out of the ratio checks);
    ``split_records``: how many records medtune split itself (None: not counted). When the first is positive and
    the second is 0, the ratio checks pass and show the official fractions."""
    if len(split_ratios) != len(SPLITS) or any(r < 0 for r in split_ratios):
        raise ValueError(f"split_ratios must be {len(SPLITS)} non-negative fractions, got {split_ratios!r}")
    if split_tolerance < 0:
        raise ValueError(f"split_tolerance must be >= 0, got {split_tolerance!r}")
    if min_records < 0:
        raise ValueError(f"min_records must be >= 0, got {min_records!r}")
    return [
        _in_set("json", "json_ok", [True], "every line is a JSON object", "json_detail"),
        _no_text("schema", "schema_errors", "records have the contract's keys and types, and no unknown keys"),
        Check(
            "row_count", f"the dataset has at least {min_records} records", "ExpectTableRowCountToBeBetween",
            {"min_value": min_records},
        ),
        Check("id_unique", "record ids are unique", "ExpectColumnValuesToBeUnique", {"column": "id"}),
        Check("id_format", "ids look like '<source>/<uid>'", "ExpectColumnValuesToMatchRegex",
              {"column": "id", "regex": ID_REGEX}),
        _in_set("modality", "modality", list(MODALITIES), f"modality is one of {', '.join(MODALITIES)}"),
        _in_set("task", "task", list(TASKS), f"task is one of {', '.join(TASKS)}"),
        _in_set("kind", "kind", list(KINDS), f"kind is one of {', '.join(KINDS)}"),
        _in_set("split", "split", list(SPLITS), f"split is one of {', '.join(SPLITS)}"),
        _in_set("task_kind", "task_kind_ok", [True], "generation kinds have task 'generation', the others "
                "'comprehension'"),
        _in_set("generation_input", "generation_input_ok", [True],
                "generation records have at least one input image (text_to_image may have none)",
                "generation_input_detail"),
        _in_set("image_sha256_shape", "image_sha256_shape_ok", [True],
                "image_sha256 has the shape of image: one hash for one image, a list of the same length for "
                "several, none for a text-only record", "image_sha256_shape_detail"),
        Check("image_sha256_format", "image_sha256 is 64 lower-case hex digits (a list of them for several images)",
              "ExpectColumnValuesToMatchRegex", {"column": "image_sha256", "regex": SHA256_REGEX}),
        _in_set("image_exists", "image_exists", [True], "every image file of the record exists inside the dataset",
                "image_detail"),
        _in_set("image_decodes", "image_decodes", [True], "every image file of the record decodes (Pillow)",
                "image_detail"),
        _in_set("image_hash", "image_hash_matches", [True], "each image file's sha256 equals its image_sha256 entry",
                "image_detail"),
        Check("question_nonempty", "the question is not empty", "ExpectColumnValueLengthsToBeBetween",
              {"column": "question", "min_value": 1}),
        Check("answer_nonempty", "the answer is not empty", "ExpectColumnValueLengthsToBeBetween",
              {"column": "answer", "min_value": 1}),
        _in_set("image_token", "image_token_ok", [True],
                "the human turns hold one '<image>' per image, the n-th marking the n-th image (one image: the first "
                "human turn starts with '<image>\\n'; no image: none); gpt turns hold none", "image_token_detail"),
        *_split_ratio_checks(split_ratios, split_tolerance, official_records, split_records),
        _in_set("group_leakage", "group_split_count", [1], "no group (patient or source image) is in two splits",
                "group_detail"),
        _no_text("image_leakage", "image_leakage",
                 "no image (input or target, by its sha256) is in two splits (in one group's records the group check "
                 "reports it); a failing row names the hash and the other split's records"),
        _no_text("phi", "phi_found", "no PHI pattern (date, MRN, phone, e-mail, SSN, DICOM name) in the text"),
        _in_set("target_image", "target_ok", [True],
                "generation records have a target image that exists and matches its hash; others have none",
                "target_detail"),
    ]  # fmt: skip


def build_suite(checks: list[Check], name: str = SUITE_NAME) -> ExpectationSuite:
    """A Great Expectations suite holding one expectation per check (``meta`` names the check)."""
    import great_expectations as gx

    suite = gx.ExpectationSuite(name=name)
    for check in checks:
        cls = getattr(gx.expectations, check.expectation)
        # Data Docs put the description into HTML as is: escape '<image>' and '<source>/<uid>'.
        description = html.escape(check.description, quote=False)
        suite.add_expectation(cls(**check.kwargs, description=description, meta={META_KEY: check.key}))
    return suite
