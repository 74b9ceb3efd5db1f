"""The lenient loader and the Data Docs output."""

from __future__ import annotations

import re
from pathlib import Path

from components.validation import validate_dataset
from components.validation.frame import load_records_frame
from components.validation.suite import build_checks
from tests.unit.validation.factory import make_dataset, write_records


def test_frame_is_lenient_and_keeps_line_numbers(tmp_path: Path) -> None:
    records = make_dataset(tmp_path, groups=2)
    path = write_records(tmp_path, [records[0], "", "not json", records[1]])
    with path.open("ab") as fh:
        fh.write(b"\xff\xfe broken bytes\n")
    df = load_records_frame(path)
    assert df["row"].tolist() == [1, 3, 4, 5]  # the blank line 2 is skipped, not a row
    assert df["json_ok"].tolist() == [True, False, True, False]
    assert df.loc[3, "json_detail"].startswith("not UTF-8")
    ok = df.iloc[0]
    assert (ok.image_exists, ok.image_decodes, ok.image_hash_matches, ok.image_token_ok, ok.target_ok) == (
        True, True, True, True, True,
    )  # fmt: skip
    assert ok.question == "Is there a lesion?" and ok.answer == "yes"
    assert ok.phi_found == "" and ok.schema_errors == ""
    # Split indicators: 0/1 for JSON records, null (outside the fraction's denominator) for broken lines.
    assert df["is_train"].isna().tolist() == [False, True, False, True]
    assert df["is_train"].sum() == 2.0


def test_derived_columns_are_null_when_a_prerequisite_failed(tmp_path: Path) -> None:
    records = make_dataset(tmp_path, groups=1)
    (tmp_path / records[0]["image"]).unlink()
    df = load_records_frame(tmp_path / "records.jsonl")
    row = df.iloc[0]
    assert row.image_exists is False
    assert row.image_decodes is None and row.image_hash_matches is None  # reported once, as missing


def test_group_and_split_columns(tmp_path: Path) -> None:
    records = make_dataset(tmp_path, groups=10)
    records[0]["split"] = "val"
    df = load_records_frame(write_records(tmp_path, records))
    assert df["group_split_count"].tolist()[:4] == [2, 2, 2, 1]
    assert df["is_val"].mean() == (3 + 1) / 30


def test_build_checks_clamps_ratio_bounds() -> None:
    checks = {c.key: c for c in build_checks(split_ratios=(0.9, 0.05, 0.05), split_tolerance=0.2, min_records=5)}
    assert checks["split_ratio_train"].kwargs == {"column": "is_train", "min_value": 0.7, "max_value": 1.0}
    assert checks["split_ratio_val"].kwargs["min_value"] == 0.0
    assert checks["row_count"].kwargs == {"min_value": 5}


def _text(path: Path) -> str:
    html = path.read_text(encoding="utf-8")
    html = re.sub(r"<(style|script)\b.*?</\1>", " ", html, flags=re.S)
    return " ".join(re.sub(r"<[^>]+>", " ", html).split())


def test_data_docs_show_the_failing_expectation(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    records = make_dataset(root)
    records[6]["modality"] = "PET"
    write_records(root, records)
    docs = tmp_path / "docs"
    report = validate_dataset(root, docs_dir=docs)
    assert report.docs_index == str((docs / "index.html").resolve())
    assert Path(report.docs_index).is_file()
    assert report.docs_page is not None
    page = Path(report.docs_page)
    assert page.is_relative_to(docs.resolve())
    index = (docs / "index.html").read_text(encoding="utf-8")
    assert page.relative_to(docs.resolve()).as_posix() in index  # the index links to this run's page
    assert "Failed" in index
    text = _text(page)
    assert "Status: Failed" in text
    assert "Unsuccessful Expectations 1" in text
    failing = text[text.index("modality is one of") :]
    assert re.match(r"modality is one of [^.]* 1 unexpected values found\..*?PET 1 7 phantom/s002-q1", failing)


def test_data_docs_for_a_passing_run(tmp_path: Path) -> None:
    make_dataset(tmp_path / "ds")
    report = validate_dataset(tmp_path / "ds", docs_dir=tmp_path / "docs")
    assert report.success
    assert report.docs_page is not None
    assert "Status: Succeeded" in _text(Path(report.docs_page))
