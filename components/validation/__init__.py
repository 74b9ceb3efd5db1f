"""The data validation gate (Great Expectations 1.x suites as code) for VL-Health datasets.

    from components.validation import validate_dataset
    report = validate_dataset(Path("data/vlhealth"), docs_dir=Path("reports/data_docs"))
    if not report.success:
        print("\n".join(report.summary_lines()))

Modules: :mod:`.frame` (records -> DataFrame with derived check columns), :mod:`.suite` (the expectations),
:mod:`.gate` (running them, the report), :mod:`.docs` (Data Docs HTML).
"""

from components.validation.gate import (
    Failure,
    SampleRow,
    ValidationInputError,
    ValidationReport,
    validate_dataset,
)

__all__ = ["Failure", "SampleRow", "ValidationInputError", "ValidationReport", "validate_dataset"]
