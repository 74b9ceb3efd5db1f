"""The gate on records with zero, one or several images (issue 16): lists and text-only rows pass when they fit
the contract; each way they can break fails one named check on the right row.

Rows 1-30 are the 10-group factory dataset; rows 31, 32, 33 are a two-image record, a text-only record and a
text_to_image record with no input image (``add_multi_and_text_only``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from components.validation import ValidationReport, validate_dataset
from components.validation.frame import load_records_frame
from components.validation.suite import build_checks, build_suite
from tests.unit.validation.factory import add_multi_and_text_only, make_dataset, write_records

CMP, TXT, T2I = 30, 31, 32  # indexes of the added records (lines 31, 32, 33)


def failed(report: ValidationReport) -> set[str]:
    return {f.check for f in report.failures}


def samples(report: ValidationReport, check: str) -> list[tuple[int, str | None, Any]]:
    (failure,) = [f for f in report.failures if f.check == check]
    return [(s.line, s.id, s.value) for s in failure.samples]


@pytest.fixture
def dataset(tmp_path: Path) -> tuple[Path, list[dict[str, Any]]]:
    root = tmp_path / "ds"
    records = add_multi_and_text_only(root, make_dataset(root))
    write_records(root, records)
    return root, records


def test_multi_image_and_text_only_rows_pass(dataset: tuple[Path, list[dict[str, Any]]]) -> None:
    root, _ = dataset
    report = validate_dataset(root)
    assert report.success, report.summary_lines()
    assert report.statistics == {"evaluated": 26, "successful": 26, "unsuccessful": 0, "rows": 33}
    df = load_records_frame(root / "records.jsonl")
    multi, text = df.iloc[CMP], df.iloc[TXT]
    assert (multi.image_exists, multi.image_decodes, multi.image_hash_matches, multi.image_token_ok) == (
        True, True, True, True,
    )  # fmt: skip
    # a text-only row: the image checks do not apply (null), the token and shape checks do
    assert (text.image_exists, text.image_decodes, text.image_hash_matches) == (None, None, None)
    assert (text.image_token_ok, text.image_sha256_shape_ok, text.generation_input_ok) == (True, True, True)


def test_image_list_and_hash_list_of_different_lengths_fail(dataset: tuple[Path, list[dict[str, Any]]]) -> None:
    root, records = dataset
    records[CMP]["image_sha256"] = [*records[CMP]["image_sha256"], records[0]["image_sha256"]]  # 2 images, 3 hashes
    records[0]["image_sha256"] = [records[0]["image_sha256"]] * 2  # one image, a list of hashes
    records[TXT]["image_sha256"] = records[0]["image_sha256"]  # no image, but hashes
    write_records(root, records)
    report = validate_dataset(root)
    assert failed(report) == {"image_sha256_shape"}
    assert samples(report, "image_sha256_shape") == [
        (1, "phantom/s000-q1", "one image but image_sha256 is a list of 2"),
        (31, "phantom/s000-cmp", "2 images in field image but image_sha256 is a list of 3"),
        (32, "phantom/s000-txt", "a record without an image carries image_sha256"),
    ]


def test_a_missing_image_in_a_list_is_named_by_its_index(dataset: tuple[Path, list[dict[str, Any]]]) -> None:
    root, records = dataset
    (root / records[CMP]["image"][1]).unlink()
    report = validate_dataset(root)
    assert failed(report) == {"image_exists"}
    assert samples(report, "image_exists") == [
        (31, "phantom/s000-cmp", "image[1] images/s000/other.png: file not found")
    ]


def test_a_wrong_hash_in_a_list_is_named_by_its_index(dataset: tuple[Path, list[dict[str, Any]]]) -> None:
    root, records = dataset
    records[CMP]["image_sha256"] = list(reversed(records[CMP]["image_sha256"]))  # hashes out of image order
    write_records(root, records)
    report = validate_dataset(root)
    assert failed(report) == {"image_hash"}
    ((line, _, detail),) = samples(report, "image_hash")
    assert line == 31 and detail.startswith("image[0] images/s000/input.png: sha256 ")
    assert "; image[1] images/s000/other.png: sha256 " in detail


def test_a_list_whose_image_does_not_decode(dataset: tuple[Path, list[dict[str, Any]]]) -> None:
    root, records = dataset
    other = root / records[CMP]["image"][1]
    other.write_bytes(other.read_bytes()[:40])
    records[CMP]["image_sha256"][1] = hashlib.sha256(other.read_bytes()).hexdigest()
    write_records(root, records)
    report = validate_dataset(root)
    assert failed(report) == {"image_decodes"}
    ((line, _, detail),) = samples(report, "image_decodes")
    assert line == 31 and detail.startswith("image[1] images/s000/other.png: cannot decode")


def test_token_counts_must_equal_image_counts(dataset: tuple[Path, list[dict[str, Any]]]) -> None:
    root, records = dataset
    records[CMP]["conversations"][0]["value"] = "Compare <image> with the other one."  # 1 token, 2 images
    records[TXT]["conversations"][0]["value"] = "<image>\nWhat does CT stand for?"  # a token, no image
    write_records(root, records)
    report = validate_dataset(root)
    assert failed(report) == {"image_token"}
    assert samples(report, "image_token") == [
        (31, "phantom/s000-cmp", "'<image>' appears 1 times in the human turns for 2 images in field image"),
        (32, "phantom/s000-txt", "'<image>' appears 1 times in the human turns for no image (a text-only record)"),
    ]


def test_tokens_of_several_images_may_sit_in_any_human_turn(dataset: tuple[Path, list[dict[str, Any]]]) -> None:
    root, records = dataset
    records[CMP]["conversations"] = [
        {"from": "human", "value": "Look at <image>."},
        {"from": "gpt", "value": "Seen."},
        {"from": "human", "value": "Now compare it with <image>."},
        {"from": "gpt", "value": "The second is brighter."},
    ]
    write_records(root, records)
    assert validate_dataset(root).success


def test_generation_needs_an_input_image_unless_text_to_image(dataset: tuple[Path, list[dict[str, Any]]]) -> None:
    root, records = dataset
    del records[2]["image"], records[2]["image_sha256"]  # a super-resolution record without its input image
    records[2]["conversations"][0]["value"] = "Upscale this CT image 2x."
    write_records(root, records)
    report = validate_dataset(root)
    assert failed(report) == {"generation_input"}  # row 33 (text_to_image, no input image) passes
    assert samples(report, "generation_input") == [
        (3, "phantom/s000-sr", "generation record of kind 'super_resolution' has no input image")
    ]


def test_a_list_of_one_image_is_a_schema_error(dataset: tuple[Path, list[dict[str, Any]]]) -> None:
    root, records = dataset
    records[0]["image"], records[0]["image_sha256"] = [records[0]["image"]], [records[0]["image_sha256"]]
    write_records(root, records)
    report = validate_dataset(root)
    assert failed(report) == {"schema", "image_sha256_format"}  # one image is spelled as a string
    assert samples(report, "schema")[0][:2] == (1, "phantom/s000-q1")


def test_suite_descriptions_stay_html_escaped() -> None:
    checks = build_checks(split_ratios=(0.8, 0.1, 0.1), split_tolerance=0.1, min_records=1)
    suite = build_suite(checks)
    by_key = {e.meta["medtune_check"]: e.description for e in suite.expectations}
    assert "&lt;image&gt;" in by_key["image_token"] and "<image>" not in by_key["image_token"]
    assert "text_to_image" in by_key["generation_input"] and "shape of image" in by_key["image_sha256_shape"]
