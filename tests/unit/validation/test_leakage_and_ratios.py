"""Issue 18, the gate: one image in two splits fails by its hash; split ratios take official splits and exact
boundaries as they are.

Rows 1-30 are the 10-group factory dataset (groups s000-s007 train, s008 val, s009 test; three records per group
sharing one input image, the third with a target image). Line n+1 of records.jsonl holds records[n].
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from components.validation import ValidationReport, validate_dataset
from components.validation.frame import load_records_frame
from components.validation.suite import build_checks
from tests.unit.validation.factory import add_multi_and_text_only, make_dataset, sha256, write_records


def failed(report: ValidationReport) -> set[str]:
    return {f.check for f in report.failures}


def samples(report: ValidationReport, check: str) -> list[tuple[int, str | None, Any]]:
    (failure,) = [f for f in report.failures if f.check == check]
    return [(s.line, s.id, s.value) for s in failure.samples]


def copy_image(root: Path, records: list[dict[str, Any]], source: int, group: str, field: str = "image") -> str:
    """Give every record of ``group`` a byte-identical copy of records[source]'s input image as its ``field``
    (a new file, so the bytes and not the path are shared); returns the sha256."""
    copy = f"images/{group}/copy.png"
    shutil.copyfile(root / records[source]["image"], root / copy)
    sha = sha256(root / copy)
    for record in records:
        if record["group"] == group and (field == "image" or record.get("target_image")):
            record[field], record[f"{field}_sha256"] = copy, sha
    return sha


@pytest.fixture
def dataset(tmp_path: Path) -> tuple[Path, list[dict[str, Any]]]:
    root = tmp_path / "ds"
    return root, make_dataset(root)


def test_byte_identical_image_in_train_and_test_fails_naming_hash_and_ids(
    dataset: tuple[Path, list[dict[str, Any]]],
) -> None:
    root, records = dataset
    sha = copy_image(root, records, source=0, group="s009")  # BreastMNIST's train-00115 / test-00076
    write_records(root, records)
    report = validate_dataset(root)
    assert failed(report) == {"image_leakage"}
    failure = [f for f in report.failures if f.check == "image_leakage"][0]
    assert failure.unexpected_count == 6  # the three records of s000 (train) and of s009 (test)
    rows = samples(report, "image_leakage")
    assert [(line, rid) for line, rid, _ in rows] == [(1, "phantom/s000-q1"), (2, "phantom/s000-q2"),
                                                      (3, "phantom/s000-sr"), (28, "phantom/s009-q1"),
                                                      (29, "phantom/s009-q2")]  # fmt: skip
    assert rows[0][2] == f"image_sha256 {sha} is also in test (phantom/s009-q1, phantom/s009-q2, phantom/s009-sr)"
    assert rows[3][2] == f"image_sha256 {sha} is also in train (phantom/s000-q1, phantom/s000-q2, phantom/s000-sr)"


def test_target_and_listed_images_count_and_long_lists_are_cut(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    records = add_multi_and_text_only(root, make_dataset(root))
    # s009's target (test) is a copy of s001's input (train); the second image of s000's two-image record (train)
    # is copied into s008's (val) records.
    target_sha = copy_image(root, records, source=3, group="s009", field="target_image")
    other = records[30]["image"][1]
    shutil.copyfile(root / other, root / "images/s008/copy.png")
    for record in records[24:27]:
        record["image"], record["image_sha256"] = "images/s008/copy.png", sha256(root / other)
    write_records(root, records)
    df = load_records_frame(root / "records.jsonl")
    leak = dict(zip(df["id"], df["image_leakage"], strict=True))
    assert leak["phantom/s009-sr"] == (
        f"target_image_sha256 {target_sha} is also in train (phantom/s001-q1, phantom/s001-q2, phantom/s001-sr)"
    )
    assert leak["phantom/s001-q1"] == f"image_sha256 {target_sha} is also in test (phantom/s009-sr)"
    other_sha = sha256(root / other)
    assert leak["phantom/s000-cmp"].startswith(f"image_sha256[1] {other_sha} is also in val (phantom/s008-q1")
    assert leak["phantom/s009-q1"] == ""  # its input image is its own
    assert leak["phantom/s000-txt"] is None  # text-only: nothing to compare

    # many records of another split: three ids and a count
    for g in range(1, 8):
        shutil.copyfile(root / records[0]["image"], root / f"images/s{g:03d}/input.png")
    for record in records[:24]:
        record["image_sha256"] = records[0]["image_sha256"]
    copy_image(root, records, source=0, group="s009")
    write_records(root, records)
    df = load_records_frame(root / "records.jsonl")
    assert df.loc[df["id"] == "phantom/s009-q1", "image_leakage"].item() == (
        f"image_sha256 {records[0]['image_sha256']} is also in train "
        "(phantom/s000-q1, phantom/s000-q2, phantom/s000-sr and 22 more)"
    )  # 24 records of s000-s007 plus s000-cmp's first image, less the three named


def test_one_groups_image_in_two_splits_is_the_group_checks_failure(
    dataset: tuple[Path, list[dict[str, Any]]],
) -> None:
    root, records = dataset
    records[1]["split"] = "test"
    write_records(root, records)
    report = validate_dataset(root)
    assert failed(report) == {"group_leakage"}  # not image_leakage too: one broken thing, one failure


def test_split_exactly_at_ratio_minus_tolerance_passes(dataset: tuple[Path, list[dict[str, Any]]]) -> None:
    root, records = dataset
    assert 0.8 - 0.1 != 0.7  # what broke BreastMNIST's 0.7 against 0.7000000000000001
    for record in records[21:24]:  # group s007 moves from train to val: 21 of 30 records (70 %) in train
        record["split"] = "val"
    write_records(root, records)
    report = validate_dataset(root, split_ratios=(0.8, 0.1, 0.1), split_tolerance=0.1)
    assert report.success, report.summary_lines()  # train 0.7 in [0.7, 0.9], val 0.2 in [0, 0.2]
    checks = {c.key: c for c in build_checks(split_ratios=(0.8, 0.1, 0.1), split_tolerance=0.1, min_records=1)}
    assert checks["split_ratio_train"].kwargs["min_value"] == 0.7
    assert checks["split_ratio_val"].kwargs["max_value"] == 0.2
    records[20]["split"] = "val"  # one record less in train: 0.667 < 0.7 (and s006 now leaks)
    write_records(root, records)
    assert {"split_ratio_train"} <= failed(validate_dataset(root, split_tolerance=0.1))


def official(records: list[dict[str, Any]]) -> None:
    for record in records:
        record["meta"]["official_split"] = record["split"]


def test_only_records_medtune_split_are_held_to_the_ratios(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    records = make_dataset(root, groups=20)  # s000-s009 8/1/1 and s010-s019 8/1/1
    official(records[30:])
    for record in records[30:]:
        record["split"] = record["meta"]["official_split"] = "test"  # the source's test set: 30 of 60 in test
    write_records(root, records)
    report = validate_dataset(root)
    assert report.success, report.summary_lines()  # counted, train would be 24/60 = 0.4
    assert report.notes == []
    df = load_records_frame(root / "records.jsonl")
    assert df["is_train"].mean() == pytest.approx(0.8) and df["is_train"].count() == 30
    assert df["official_test"].sum() == 30 and df["official_test"].count() == 30

    for record in records[24:27]:  # medtune's own val group moves to train: its split is off again
        record["split"] = "train"
    write_records(root, records)
    report = validate_dataset(root, split_tolerance=0.05)
    assert failed(report) == {"split_ratio_train", "split_ratio_val"}
    (line,) = [f.headline() for f in report.failures if f.check == "split_ratio_val"]
    assert line == (
        "expect_column_mean_to_be_between(is_val): observed 0 - fraction of records in val is 0.1 +/- 0.05 "
        "(between 0.05 and 0.15); 30 records with their source's official split are not counted"
    )


def test_all_official_splits_pass_with_the_observed_fraction_as_a_note(
    dataset: tuple[Path, list[dict[str, Any]]],
) -> None:
    root, records = dataset
    for record in records[24:27]:
        record["split"] = "train"  # SLAKE-like: the source's own split, far from 0.8/0.1/0.1
    official(records)
    write_records(root, records)
    report = validate_dataset(root, split_tolerance=0.05)
    assert report.success, report.summary_lines()
    assert report.notes[0] == (
        "split_ratio_train observed 0.9 - every record keeps its source's official split: the fraction in train is "
        "shown, not held to 0.8 +/- 0.05 (between 0.75 and 0.85)"
    )
    assert [n.split(" - ")[0] for n in report.notes] == [
        "split_ratio_train observed 0.9", "split_ratio_val observed 0", "split_ratio_test observed 0.1",
    ]  # fmt: skip
    assert report.summary_lines()[1] == f"  note: {report.notes[0]}"
    assert report.to_json()["notes"] == report.notes


def test_an_empty_official_split_is_medtunes(dataset: tuple[Path, list[dict[str, Any]]]) -> None:
    root, records = dataset
    for record in records:
        record["meta"]["official_split"] = ""
    for record in records[24:27]:
        record["split"] = "train"
    write_records(root, records)
    report = validate_dataset(root, split_tolerance=0.05)
    assert failed(report) == {"split_ratio_train", "split_ratio_val"}
