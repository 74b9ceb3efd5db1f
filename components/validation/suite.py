"""The VL-Health validation suite, as code (issue 3, item 5).

Each :class:`Check` is one Great Expectations 1.x expectation over the frame that
:func:`components.validation.frame.load_records_frame` builds, plus what medtune needs to report it: a short
key, a sentence a person understands, and which ``*_detail`` column explains a failing row. The checks cover:
parseable lines, schema and types, allowed values, unique ids, images that exist, decode and match their
recorded hash (every image of a row: a record has zero, one or several, issue 16), ``image_sha256`` in the
shape of ``image``, non-empty question and answer, ``<image>`` token count and placement, split ratios within
tolerance, zero group leakage, no PHI pattern, generation records with an input image (unless text_to_image)
and a target image, and a minimum row count.

Split ratios are column means of 0/1 split indicators (``is_train`` ...), so the expectation's observed value
*is* the fraction of records in that split.

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

    @property
    def column(self) -> str | None:
        return self.kwargs.get("column")


def _in_set(key: str, column: str, values: list[Any], description: str, detail: str | None = None) -> Check:
    return Check(key, description, "ExpectColumnValuesToBeInSet", {"column": column, "value_set": values}, detail)


def _no_text(key: str, column: str, description: str) -> Check:
    return Check(key, description, "ExpectColumnValueLengthsToEqual", {"column": column, "value": 0})


def _split_ratio_checks(split_ratios: tuple[float, float, float], tolerance: float) -> list[Check]:
    checks = []
    for split, ratio in zip(SPLITS, split_ratios, strict=True):
        low, high = max(0.0, ratio - tolerance), min(1.0, ratio + tolerance)
        checks.append(
            Check(
                f"split_ratio_{split}",
                f"fraction of records in {split} is {ratio:g} +/- {tolerance:g} (between {low:g} and {high:g})",
                "ExpectColumnMeanToBeBetween",
                {"column": f"is_{split}", "min_value": low, "max_value": high},
            )
        )
    return checks


def build_checks(*, split_ratios: tuple[float, float, float], split_tolerance: float, min_records: int) -> list[Check]:
    """The checks in report order. Ratios are per split (train, val, test); tolerance is absolute."""
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
        *_split_ratio_checks(split_ratios, split_tolerance),
        _in_set("group_leakage", "group_split_count", [1], "no group (patient or source image) is in two splits",
                "group_detail"),
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
