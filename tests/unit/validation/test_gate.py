"""The validation gate: a clean dataset passes; each kind of bad data fails the right check on the right rows.

Every broken case asserts the exact set of failed checks (so a bad row is reported once, by the check that
owns it) and the line numbers and ids named in the samples. Line n+1 of records.jsonl holds records[n].
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from components.validation import ValidationInputError, ValidationReport, validate_dataset
from tests.unit.validation.factory import make_dataset, sha256, write_records


def failed(report: ValidationReport) -> set[str]:
    return {f.check for f in report.failures}


def failure(report: ValidationReport, check: str) -> Any:
    (match,) = [f for f in report.failures if f.check == check]
    return match


def lines_and_ids(report: ValidationReport, check: str) -> list[tuple[int, str | None]]:
    return [(s.line, s.id) for s in failure(report, check).samples]


@pytest.fixture
def dataset(tmp_path: Path) -> tuple[Path, list[dict[str, Any]]]:
    root = tmp_path / "ds"
    return root, make_dataset(root)


def test_valid_dataset_passes(dataset: tuple[Path, list[dict[str, Any]]]) -> None:
    root, _ = dataset
    report = validate_dataset(root)
    assert report.success, report.summary_lines()
    assert report.failures == []
    assert report.statistics == {"evaluated": 26, "successful": 26, "unsuccessful": 0, "rows": 30}
    assert report.summary_lines() == [f"validation passed: 26/26 expectations on 30 records ({root / 'records.jsonl'})"]


def test_missing_answer(dataset: tuple[Path, list[dict[str, Any]]]) -> None:
    root, records = dataset
    del records[4]["conversations"][1]
    records[7]["conversations"][1]["value"] = "   "
    write_records(root, records)
    report = validate_dataset(root)
    assert not report.success
    assert failed(report) == {"answer_nonempty"}
    assert lines_and_ids(report, "answer_nonempty") == [(5, "phantom/s001-q2"), (8, "phantom/s002-q2")]
    assert failure(report, "answer_nonempty").expectation_type == "expect_column_value_lengths_to_be_between"


def test_unknown_modality_summary_names_line_id_and_value(dataset: tuple[Path, list[dict[str, Any]]]) -> None:
    root, records = dataset
    records[6]["modality"] = "PET"
    write_records(root, records)
    report = validate_dataset(root)
    assert failed(report) == {"modality"}
    assert report.summary_lines() == [
        "expect_column_values_to_be_in_set(modality): 1 of 30 rows failed - "
        "modality is one of CT, MRI, X-ray, ultrasound, pathology, other",
        "  line 7 (id phantom/s002-q1): 'PET'",
    ]


def test_duplicate_id_names_both_rows(dataset: tuple[Path, list[dict[str, Any]]]) -> None:
    root, records = dataset
    records[10]["id"] = records[2]["id"]
    write_records(root, records)
    report = validate_dataset(root)
    assert failed(report) == {"id_unique"}
    assert lines_and_ids(report, "id_unique") == [(3, "phantom/s000-sr"), (11, "phantom/s000-sr")]


def test_missing_image_file_fails_every_record_using_it(dataset: tuple[Path, list[dict[str, Any]]]) -> None:
    root, records = dataset
    (root / records[3]["image"]).unlink()
    report = validate_dataset(root)
    assert failed(report) == {"image_exists"}
    assert lines_and_ids(report, "image_exists") == [(4, "phantom/s001-q1"), (5, "phantom/s001-q2"),
                                                     (6, "phantom/s001-sr")]  # fmt: skip
    assert failure(report, "image_exists").samples[0].value == "images/s001/input.png: file not found"


def test_image_path_escaping_the_dataset_root(dataset: tuple[Path, list[dict[str, Any]]]) -> None:
    root, records = dataset
    outside = root.parent / "outside.png"
    outside.write_bytes((root / records[0]["image"]).read_bytes())
    records[0]["image"] = "../outside.png"
    write_records(root, records)
    report = validate_dataset(root)
    assert failed(report) == {"image_exists"}
    assert failure(report, "image_exists").samples[0].value == "../outside.png: path escapes the dataset root"


def test_wrong_hash(dataset: tuple[Path, list[dict[str, Any]]]) -> None:
    root, records = dataset
    records[9]["image_sha256"] = "0" * 64
    write_records(root, records)
    report = validate_dataset(root)
    assert failed(report) == {"image_hash"}
    assert lines_and_ids(report, "image_hash") == [(10, "phantom/s003-q1")]
    assert "!= recorded 000000000000" in failure(report, "image_hash").samples[0].value


def test_corrupt_image(dataset: tuple[Path, list[dict[str, Any]]]) -> None:
    root, records = dataset
    image = root / records[12]["image"]
    image.write_bytes(image.read_bytes()[:40])  # a truncated PNG
    for record in records[12:15]:  # the recorded hash is of the broken file: only decoding fails
        record["image_sha256"] = sha256(image)
    write_records(root, records)
    report = validate_dataset(root)
    assert failed(report) == {"image_decodes"}
    assert [line for line, _ in lines_and_ids(report, "image_decodes")] == [13, 14, 15]
    assert "cannot decode" in failure(report, "image_decodes").samples[0].value


def test_corrupt_image_without_new_hash_fails_decode_and_hash(dataset: tuple[Path, list[dict[str, Any]]]) -> None:
    root, records = dataset
    (root / records[0]["image"]).write_bytes(b"not a png")
    report = validate_dataset(root)
    assert failed(report) == {"image_decodes", "image_hash"}


def test_missing_image_token(dataset: tuple[Path, list[dict[str, Any]]]) -> None:
    root, records = dataset
    records[1]["conversations"][0]["value"] = "Which organ is largest?"
    records[2]["conversations"][1]["value"] = "<image>\nhere it is"  # a token in a gpt turn
    records[3]["conversations"][0]["value"] = "<image>\n<image>\nIs there a lesion?"  # two tokens, one image
    write_records(root, records)
    report = validate_dataset(root)
    assert failed(report) == {"image_token"}
    samples = failure(report, "image_token").samples
    assert [(s.line, s.id) for s in samples] == [(2, "phantom/s000-q2"), (3, "phantom/s000-sr"), (4, "phantom/s001-q1")]
    assert "does not start with '<image>'" in samples[0].value
    assert samples[1].value == "turn 1 (gpt) holds '<image>'; only human turns mark images"
    assert "appears 2 times" in samples[2].value


def test_phi_in_question_is_named_without_repeating_it(dataset: tuple[Path, list[dict[str, Any]]]) -> None:
    root, records = dataset
    records[4]["conversations"][0]["value"] = "<image>\nPatient Doe^Jane, MRN 12345678: is there a lesion?"
    write_records(root, records)
    report = validate_dataset(root)
    assert failed(report) == {"phi"}
    (sample,) = failure(report, "phi").samples
    assert (sample.line, sample.id, sample.value) == (5, "phantom/s001-q2", "question: mrn,dicom_name")
    text = json.dumps(report.to_json()) + "\n".join(report.summary_lines())
    assert "Doe" not in text and "12345678" not in text


def test_group_in_two_splits(dataset: tuple[Path, list[dict[str, Any]]]) -> None:
    root, records = dataset
    records[1]["split"] = "test"  # group s000 is train
    write_records(root, records)
    report = validate_dataset(root)
    assert failed(report) == {"group_leakage"}
    assert [line for line, _ in lines_and_ids(report, "group_leakage")] == [1, 2, 3]
    assert failure(report, "group_leakage").samples[0].value == "group 's000' is in test, train"


def test_generation_record_without_target(dataset: tuple[Path, list[dict[str, Any]]]) -> None:
    root, records = dataset
    del records[5]["target_image"], records[5]["target_image_sha256"]
    records[0]["target_image"] = records[2]["target_image"]  # a comprehension record with a target
    write_records(root, records)
    report = validate_dataset(root)
    assert failed(report) == {"target_image"}
    assert failure(report, "target_image").samples[0].value == "comprehension record carries a target image"
    assert lines_and_ids(report, "target_image")[1] == (6, "phantom/s001-sr")


def test_missing_target_file(dataset: tuple[Path, list[dict[str, Any]]]) -> None:
    root, records = dataset
    (root / records[2]["target_image"]).unlink()
    report = validate_dataset(root)
    assert failed(report) == {"target_image"}
    assert failure(report, "target_image").samples[0].value == "target images/s000/target.png: file not found"


def test_split_ratios_off(dataset: tuple[Path, list[dict[str, Any]]]) -> None:
    root, records = dataset
    for record in records:
        if record["split"] == "val":
            record["split"] = "train"  # whole group moves: no leakage, but no validation split
    write_records(root, records)
    report = validate_dataset(root, split_tolerance=0.05)
    assert failed(report) == {"split_ratio_train", "split_ratio_val"}
    assert failure(report, "split_ratio_train").observed_value == pytest.approx(0.9)
    assert failure(report, "split_ratio_val").observed_value == pytest.approx(0.0)
    assert failure(report, "split_ratio_val").headline() == (
        "expect_column_mean_to_be_between(is_val): observed 0 - "
        "fraction of records in val is 0.1 +/- 0.05 (between 0.05 and 0.15)"
    )


def test_configured_ratios_are_used(dataset: tuple[Path, list[dict[str, Any]]]) -> None:
    root, _ = dataset
    report = validate_dataset(root, split_ratios=(0.6, 0.2, 0.2), split_tolerance=0.1)
    assert failed(report) == {"split_ratio_train"}


def test_non_json_lines(dataset: tuple[Path, list[dict[str, Any]]]) -> None:
    root, records = dataset
    lines: list[dict[str, Any] | str] = list(records)
    lines.insert(3, '{"id": "phantom/broken", ')
    lines.insert(7, "[1, 2]")
    write_records(root, lines)
    report = validate_dataset(root)
    assert failed(report) == {"json"}
    samples = failure(report, "json").samples
    assert [(s.line, s.id) for s in samples] == [(4, None), (8, None)]
    assert samples[0].value.startswith("not valid JSON")
    assert samples[1].value == "a JSON list, not an object"
    assert report.statistics["rows"] == 32


def test_schema_missing_key_wrong_type_unknown_key(dataset: tuple[Path, list[dict[str, Any]]]) -> None:
    root, records = dataset
    del records[0]["license"]
    records[1]["features"] = "site-a"
    records[2]["extra"] = 1
    write_records(root, records)
    report = validate_dataset(root)
    assert failed(report) == {"schema"}
    values = [s.value for s in failure(report, "schema").samples]
    assert values == ["license: Field required", "features: Input should be a valid dictionary",
                      "extra: Extra inputs are not permitted"]  # fmt: skip


def test_task_kind_mismatch(dataset: tuple[Path, list[dict[str, Any]]]) -> None:
    root, records = dataset
    records[0]["kind"] = "modality_conversion"  # a comprehension record with a generation kind
    write_records(root, records)
    report = validate_dataset(root)
    assert failed(report) == {"task_kind", "target_image"}
    assert lines_and_ids(report, "task_kind") == [(1, "phantom/s000-q1")]


def test_too_few_rows(dataset: tuple[Path, list[dict[str, Any]]]) -> None:
    root, _ = dataset
    report = validate_dataset(root, min_records=100)
    assert failed(report) == {"row_count"}
    assert failure(report, "row_count").observed_value == 30


def test_empty_records_file_fails(tmp_path: Path) -> None:
    (tmp_path / "records.jsonl").write_text("\n")
    report = validate_dataset(tmp_path)
    assert not report.success
    assert "row_count" in failed(report)
    assert report.statistics["rows"] == 0


def test_samples_are_capped_but_counts_are_complete(dataset: tuple[Path, list[dict[str, Any]]]) -> None:
    root, records = dataset
    for record in records:
        record["modality"] = "PET"
    write_records(root, records)
    report = validate_dataset(root, sample_rows=2)
    modality = failure(report, "modality")
    assert modality.unexpected_count == 30
    assert [s.line for s in modality.samples] == [1, 2]
    assert len(report.summary_lines()) == 3


def test_report_json_round_trips(dataset: tuple[Path, list[dict[str, Any]]]) -> None:
    root, records = dataset
    records[0]["split"] = "holdout"
    write_records(root, lines := list(records) + ["oops"])
    assert len(lines) == 31
    data = json.loads(json.dumps(validate_dataset(root).to_json()))
    assert data["success"] is False
    by_check = {f["check"]: f for f in data["failures"]}
    assert set(by_check) == {"split", "json"}  # an unknown split is not a second split of group s000
    assert by_check["split"]["samples"] == [{"line": 1, "id": "phantom/s000-q1", "value": "holdout"}]
    assert by_check["json"]["headline"].startswith("expect_column_values_to_be_in_set(json_ok): 1 of 31 rows")


def test_records_file_option_resolves_images_beside_it(tmp_path: Path) -> None:
    root = tmp_path / "elsewhere"
    make_dataset(root)
    report = validate_dataset(tmp_path / "unused", records_file=root / "records.jsonl")
    assert report.success, report.summary_lines()


def test_missing_inputs_raise_naming_the_path(tmp_path: Path) -> None:
    with pytest.raises(ValidationInputError, match="dataset folder not found: .*nowhere"):
        validate_dataset(tmp_path / "nowhere")
    with pytest.raises(ValidationInputError, match=r"records file not found: .*records\.jsonl"):
        validate_dataset(tmp_path)


def test_bad_arguments_raise(dataset: tuple[Path, list[dict[str, Any]]]) -> None:
    root, _ = dataset
    with pytest.raises(ValueError, match="split_ratios"):
        validate_dataset(root, split_ratios=(0.8, 0.2))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="split_tolerance"):
        validate_dataset(root, split_tolerance=-0.1)
