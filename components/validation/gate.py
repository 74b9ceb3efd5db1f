"""The data validation gate: run the VL-Health suite over a dataset folder and report what failed, row by row.

``medtune data validate`` and the ``retrain`` flow's validate stage call :func:`validate_dataset`; a failing
report stops the flow. The report names each failed expectation and up to ``sample_rows`` failing records by
line number and id, with the value (or the reason) that failed::

    from components.validation import validate_dataset
    report = validate_dataset(Path("data/vlhealth"), split_ratios=(0.8, 0.1, 0.1), docs_dir=Path("reports/dd"))
    print("\\n".join(report.summary_lines()))
    json.dump(report.to_json(), open("validation_report.json", "w"))
    # expect_column_values_to_be_in_set(modality): 1 of 120 rows failed - modality is one of CT, MRI, ...
    #   line 7 (id phantom/s003-q2): 'PET'

Great Expectations is imported inside the functions (its import alone takes ~3 s).
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from components.data.records import RECORDS_FILE
from components.validation import docs
from components.validation.frame import load_records_frame
from components.validation.suite import META_KEY, Check, build_checks, build_suite

ASSET_NAME = "records"
#: COMPLETE, keyed by line number and id: every failing row can be traced to its line in records.jsonl.
RESULT_FORMAT = {"result_format": "COMPLETE", "unexpected_index_column_names": ["row", "id"]}


class ValidationInputError(Exception):
    """The dataset to validate is not there (the message names the path)."""


@dataclass(frozen=True)
class SampleRow:
    """One failing record: its 1-based line in the records file, its id, and what failed."""

    line: int
    id: str | None
    value: Any

    def describe(self) -> str:
        return f"line {self.line} (id {self.id}): {self.value!r}"


@dataclass(frozen=True)
class Failure:
    """One failed expectation."""

    check: str  # the medtune check key (suite.Check.key)
    expectation_type: str  # e.g. expect_column_values_to_be_in_set
    column: str | None
    description: str
    unexpected_count: int | None = None  # row-level expectations
    element_count: int | None = None
    observed_value: Any = None  # table-level expectations (row count, split fraction)
    samples: list[SampleRow] = field(default_factory=list)
    error: str | None = None  # the expectation could not be evaluated

    def headline(self) -> str:
        target = f"{self.expectation_type}({self.column})" if self.column else self.expectation_type
        if self.error:
            what = f"could not be evaluated ({self.error})"
        elif self.unexpected_count is not None:
            what = f"{self.unexpected_count} of {self.element_count} rows failed"
        else:
            what = f"observed {_fmt(self.observed_value)}"
        return f"{target}: {what} - {self.description}"


@dataclass
class ValidationReport:
    """The outcome of :func:`validate_dataset`; ``to_json`` is the validation report artifact."""

    success: bool
    statistics: dict[str, int]  # evaluated, successful, unsuccessful (expectations), rows (records)
    failures: list[Failure]
    records_file: str
    passed: list[str] = field(default_factory=list)  # keys of the checks that passed
    notes: list[str] = field(default_factory=list)  # what passing note checks observed (official split fractions)
    docs_index: str | None = None  # Data Docs index.html, when docs_dir was given
    docs_page: str | None = None  # the Data Docs page of this run (shows each failing expectation)
    duration_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        for failure in out["failures"]:
            failure["headline"] = _headline_from_dict(failure)
            failure["observed_value"] = _jsonable(failure["observed_value"])
            for sample in failure["samples"]:
                sample["value"] = _jsonable(sample["value"])
        return out

    def summary_lines(self) -> list[str]:
        notes = [f"  note: {note}" for note in self.notes]
        if self.success:
            s = self.statistics
            return [
                f"validation passed: {s['successful']}/{s['evaluated']} expectations on {s['rows']} records "
                f"({self.records_file})",
                *notes,
            ]
        lines: list[str] = []
        for failure in self.failures:
            lines.append(failure.headline())
            lines += [f"  {sample.describe()}" for sample in failure.samples]
        return lines + notes


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else repr(value)


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return None if math.isnan(value) else value
    return str(value)


def _headline_from_dict(data: dict[str, Any]) -> str:
    samples = [SampleRow(**s) for s in data["samples"]]
    fields = {k: v for k, v in data.items() if k not in ("samples", "headline")}
    return Failure(**fields, samples=samples).headline()


def _run_suite(df: pd.DataFrame, checks: list[Check], docs_dir: Path | None, run_name: str) -> tuple[Any, Path | None]:
    """Validate ``df`` in an ephemeral GE context; render Data Docs when ``docs_dir`` is given."""
    import great_expectations as gx
    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.data_context.types.base import ProgressBarsConfig

    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    if docs_dir is not None:
        docs.add_local_site(ctx, docs_dir)
    batch_def = (
        ctx.data_sources.add_pandas("medtune")
        .add_dataframe_asset(ASSET_NAME)
        .add_batch_definition_whole_dataframe("all")
    )
    suite = ctx.suites.add(build_suite(checks))
    definition = ctx.validation_definitions.add(gx.ValidationDefinition(name="gate", data=batch_def, suite=suite))
    checkpoint = ctx.checkpoints.add(
        gx.Checkpoint(
            name="medtune_gate",
            validation_definitions=[definition],
            actions=[docs.data_docs_action()] if docs_dir is not None else [],
            result_format=RESULT_FORMAT,
        )
    )
    result = checkpoint.run(batch_parameters={"dataframe": df}, run_id=RunIdentifier(run_name=run_name))
    ((identifier, suite_result),) = result.run_results.items()
    if docs_dir is None:
        return suite_result, None
    docs.make_offline(docs_dir)
    return suite_result, docs.page_path(ctx, identifier)


def _failure(check: Check, expectation_type: str, res: Any, by_row: pd.DataFrame, sample_rows: int) -> Failure:
    info = res.exception_info or {}
    if info.get("raised_exception"):
        return Failure(check.key, expectation_type, check.column, check.description,
                       error=str(info.get("exception_message")))  # fmt: skip
    result = res.result or {}
    samples = []
    for entry in (result.get("unexpected_index_list") or [])[:sample_rows]:
        line = int(entry["row"])
        record = by_row.loc[line]
        value = record[check.detail_column] if check.detail_column else entry.get(check.column or "")
        samples.append(SampleRow(line, record["id"] if isinstance(record["id"], str) else None, value))
    return Failure(
        check=check.key,
        expectation_type=expectation_type,
        column=check.column,
        description=check.description,
        unexpected_count=result.get("unexpected_count"),
        element_count=result.get("element_count") if "unexpected_count" in result else None,
        observed_value=result.get("observed_value"),
        samples=samples,
    )


def validate_dataset(
    dataset_dir: Path,
    *,
    records_file: Path | None = None,
    split_ratios: tuple[float, float, float] = (0.8, 0.1, 0.1),
    split_tolerance: float = 0.1,
    min_records: int = 1,
    sample_rows: int = 5,
    docs_dir: Path | None = None,
) -> ValidationReport:
    """Validate a dataset folder (``records.jsonl`` + images) against the VL-Health suite.

    ``records_file`` defaults to ``dataset_dir/records.jsonl``; image paths resolve against its folder. Bad
    records never raise: they fail expectations. A missing folder or records file raises
    :class:`ValidationInputError`.
    """
    start = time.perf_counter()
    dataset_dir = Path(dataset_dir)
    if records_file is None:
        if not dataset_dir.is_dir():
            raise ValidationInputError(f"dataset folder not found: {dataset_dir}")
        records_file = dataset_dir / RECORDS_FILE
    records_file = Path(records_file)
    if not records_file.is_file():
        raise ValidationInputError(f"records file not found: {records_file}")
    build_checks(split_ratios=split_ratios, split_tolerance=split_tolerance, min_records=min_records)  # bad args
    df = load_records_frame(records_file)
    records = int((df["json_ok"] == True).sum())  # noqa: E712 (an object column: True, False or null)
    official = int(df["official_split"].notna().sum())
    checks = build_checks(split_ratios=split_ratios, split_tolerance=split_tolerance, min_records=min_records,
                          official_records=official, split_records=records - official)  # fmt: skip
    # The run name is a folder in Data Docs and a column of its index: the dataset folder's name.
    run_name = re.sub(r"[^A-Za-z0-9_.-]+", "_", records_file.resolve().parent.name) or "dataset"
    suite_result, page = _run_suite(df, checks, docs_dir, run_name)

    by_row = df.set_index("row")
    results = {res.expectation_config.meta[META_KEY]: res for res in suite_result.results}
    failures, passed, notes = [], [], []
    for check in checks:  # report in suite order (GE groups results by column)
        res = results[check.key]
        if res.success:
            passed.append(check.key)
            if check.note:
                observed = (res.result or {}).get("observed_value")
                notes.append(f"{check.key} observed {_fmt(_jsonable(observed))} - {check.description}")
        else:
            failures.append(_failure(check, res.expectation_config.type, res, by_row, sample_rows))
    stats = suite_result.statistics
    return ValidationReport(
        success=bool(suite_result.success),
        statistics={
            "evaluated": int(stats["evaluated_expectations"]),
            "successful": int(stats["successful_expectations"]),
            "unsuccessful": int(stats["unsuccessful_expectations"]),
            "rows": len(df),
        },
        failures=failures,
        records_file=str(records_file),
        passed=passed,
        notes=notes,
        docs_index=str((docs_dir / "index.html").resolve()) if docs_dir is not None else None,
        docs_page=str(page) if page is not None else None,
        duration_s=round(time.perf_counter() - start, 3),
    )
