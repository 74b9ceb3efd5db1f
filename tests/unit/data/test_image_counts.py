"""Records with zero, one or several input images (issue 16): the contract, the helper, the build, the gate.

.venv/bin/pytest tests/unit/data/test_image_counts.py -q
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from components.data.build import _record, load_records
from components.data.records import RECORDS_FILE, Record, record_image_shas, record_images
from components.data.sources import Quarantined, SourceContext, SourceImage, SourceSample
from components.validation import validate_dataset
from tests.unit.data.helpers import build, sample

SHA_A, SHA_B, SHA_C = "a" * 64, "b" * 64, "c" * 64

#: Lines the build wrote for the embedded default before issue 16 (phantom and pydicom samples, default key
#: aside): a single-image record must still serialise to exactly these bytes.
BEFORE = [
    '{"body_part":"abdomen","conversations":[{"from":"human","value":"<image>\\nReconstruct this low-resolution CT '
    'slice at four times the resolution."},{"from":"gpt","value":"The same CT slice at full resolution."}],'
    '"features":{"body_part":"abdomen","modality":"CT","site":"site-0","task":"generation"},"group":"phantom-0-s0000",'
    '"id":"phantom/s0000/ct/sr4x","image":"images/57/578e199980df639ee47b152b4e60236df19c2cfce1d89eb44adce808ead626e5'
    '.png","image_sha256":"578e199980df639ee47b152b4e60236df19c2cfce1d89eb44adce808ead626e5","kind":"super_resolution",'
    '"license":"CC0-1.0","meta":{"question_type":"super_resolution"},"modality":"CT","source":"phantom",'
    '"split":"train","target_image":"images/79/7927ef0d5e3a863ac8cebb77f59a78e481ff809171e04e154f6cd06973e2396a.png",'
    '"target_image_sha256":"7927ef0d5e3a863ac8cebb77f59a78e481ff809171e04e154f6cd06973e2396a","task":"generation"}',
    '{"body_part":"unknown","conversations":[{"from":"human","value":"<image>\\nDescribe this image."},{"from":"gpt",'
    '"value":"An ultrasound image."}],"features":{"body_part":"unknown","modality":"ultrasound","site":'
    '"pydicom_samples","task":"comprehension"},"group":"pt-a6bc1c308946256e","id":"pydicom_samples/f-17b8daecb6e4/'
    'caption","image":"images/d2/d23585206bc3d54e0e7ce0d0e952fdff95f1c3126c0064087b9dfcf4b408553e.png",'
    '"image_sha256":"d23585206bc3d54e0e7ce0d0e952fdff95f1c3126c0064087b9dfcf4b408553e","kind":"caption",'
    '"license":"MIT","meta":{"dicom_modality":"US","frames":1,"question_type":"caption"},"modality":"ultrasound",'
    '"source":"pydicom_samples","split":"train","target_image":null,"target_image_sha256":null,"task":"comprehension"}',
]


def line(record: Record) -> str:
    """A record as the build writes it (components/data/build.py)."""
    return json.dumps(record.to_json(), ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def row(**extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": "s/x", "source": "s", "license": "CC0-1.0", "modality": "CT", "body_part": "chest",
        "task": "comprehension", "kind": "vqa_open", "group": "g", "split": "train",
        "conversations": [{"from": "human", "value": "Q?"}, {"from": "gpt", "value": "A"}],
    }  # fmt: skip
    return base | extra


# --- the contract and the helper ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "images", "shas"),
    [
        ({"image": "images/a.png", "image_sha256": SHA_A}, ["images/a.png"], [SHA_A]),
        ({"image": ["i/a.png", "i/b.png"], "image_sha256": [SHA_A, SHA_B]}, ["i/a.png", "i/b.png"], [SHA_A, SHA_B]),
        ({"image": None, "image_sha256": None}, [], []),
        ({}, [], []),  # absent: text-only
    ],
)
def test_record_images_reads_a_record_and_a_plain_row_alike(
    fields: dict[str, Any], images: list[str], shas: list[str]
) -> None:
    data = row(**fields)
    record = Record.model_validate(data)
    assert record_images(record) == record_images(data) == images
    assert record_image_shas(record) == record_image_shas(data) == shas


def test_record_images_names_the_record_and_field_for_a_bad_value() -> None:
    with pytest.raises(TypeError, match=r"record 's/x': field 'image' must be a path string.*got 5"):
        record_images(row(image=5))
    with pytest.raises(TypeError, match=r"record 's/x': field 'image_sha256'"):
        record_image_shas(row(image_sha256=[SHA_A, 7]))


@pytest.mark.parametrize("image", [["images/a.png"], [], ["a.png", 3]])
def test_record_contract_refuses_a_list_of_fewer_than_two_paths(image: list[Any]) -> None:
    # one image is spelled as a string (one spelling per record keeps rebuilds byte-identical); none is null
    with pytest.raises(ValidationError, match="image"):
        Record.model_validate(row(image=image, image_sha256=None))


def test_field_descriptions_name_the_three_shapes() -> None:
    fields = Record.model_fields
    assert "list" in (fields["image"].description or "") and "text-only" in (fields["image"].description or "")
    assert "same" in (fields["image_sha256"].description or "")
    assert "'other' for a text-only record" in (fields["modality"].description or "")


@pytest.mark.parametrize("before", BEFORE)
def test_single_image_records_serialise_byte_for_byte_as_before(before: str) -> None:
    assert line(Record.model_validate_json(before)) == before
    # and the builder makes that same line from the sample (the question's token goes in front, as before)
    data = json.loads(before)
    uid = data["id"].split("/", 1)[1]
    px = np.zeros((4, 4), np.uint8)
    target = SourceImage(key="t", pixels=px) if data["target_image"] else None
    s = SourceSample(
        uid=uid, image=SourceImage(key="i", pixels=px), modality=data["modality"], body_part=data["body_part"],
        task=data["task"], kind=data["kind"], question=data["conversations"][0]["value"].split("\n", 1)[1] + " <image>",
        answer=data["conversations"][1]["value"], group=data["group"], license=data["license"], target_image=target,
        features={k: v for k, v in data["features"].items() if k not in ("task", "modality")}, meta=data["meta"],
    )  # fmt: skip
    made = _record(data["source"], s, [data["image_sha256"]], data["target_image_sha256"])
    assert line(made) == before


# --- the build -------------------------------------------------------------------------------------------------


def pixels(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (16, 16), dtype=np.uint8)


def images(*seeds: int) -> list[SourceImage]:
    return [SourceImage(key=f"img{s}", pixels=pixels(s)) for s in seeds]


def mixed(ctx: SourceContext) -> Iterator[SourceSample]:
    yield sample("one", pixels(0))
    yield sample("two", image=images(1, 2), question="Compare <image> with <image>: which is brighter?")
    yield sample("text", image=None, modality="other", question="What does CT stand for?", answer="computed tomography")
    yield sample("sr2", image=images(3, 4), question="<image>\n<image>\nFuse these two slices.", task="generation",
                 kind="super_resolution", answer="A fused slice.", target_image=images(5)[0])  # fmt: skip
    yield sample("t2i", image=None, modality="other", question="Draw an axial CT of a normal abdomen.",
                 task="generation", kind="text_to_image", answer="An axial CT.", target_image=images(6)[0])  # fmt: skip


def sha_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_multi_image_and_text_only_records_build_validate_and_round_trip(tmp_path: Path, list_source: Callable) -> None:
    out = tmp_path / "ds"
    report = build({"s": list_source("mixed", mixed)}, out, tmp_path)
    assert report.quarantined == [] and report.records == 5
    assert report.images == 7  # 1 + 2 + 0 + 2 (+1 target) + 0 (+1 target)
    by_id = {r.id: r for r in load_records(out)}
    one, two, text, sr2, t2i = (by_id[f"s/{k}"] for k in ("one", "two", "text", "sr2", "t2i"))
    assert isinstance(one.image, str) and one.question == "<image>\nIs there an effusion?"
    # several images: a list of stored files in token order, their hashes in the same order, tokens in place
    assert (
        isinstance(two.image, list)
        and len(two.image) == 2
        and two.question == ("Compare <image> with <image>: which is brighter?")
    )
    assert record_image_shas(two) == [sha_of(out / p) for p in record_images(two)]
    with Image.open(out / two.image[0]) as a, Image.open(out / two.image[1]) as b:  # each image processed
        assert a.size == b.size == (64, 64) and a.mode == "L"
        assert np.asarray(a).tobytes() != np.asarray(b).tobytes()
    assert sr2.question == "<image>\n<image>\nFuse these two slices." and len(record_images(sr2)) == 2
    # text-only: no image, no hash, no token
    for r in (text, t2i):
        assert r.image is None and r.image_sha256 is None and "<image>" not in r.question and r.modality == "other"
    assert t2i.target_image and (out / t2i.target_image).is_file()
    lines = (out / RECORDS_FILE).read_text(encoding="utf-8").splitlines()
    for text_line in lines:  # records.jsonl round trip: parse and write again, byte for byte
        assert line(Record.model_validate_json(text_line)) == text_line
    assert '"image":null,"image_sha256":null' in lines[[r.id for r in load_records(out)].index("s/text")]
    validation = validate_dataset(out, split_tolerance=1.0)
    assert validation.success, validation.summary_lines()
    # the same build again is byte-identical
    build({"s": list_source("mixed", mixed)}, tmp_path / "again", tmp_path)
    assert (tmp_path / "again" / RECORDS_FILE).read_bytes() == (out / RECORDS_FILE).read_bytes()


def test_groups_sharing_any_image_of_a_list_are_split_together(tmp_path: Path, list_source: Callable) -> None:
    def linked(ctx: SourceContext) -> Iterator[SourceSample]:
        for i in range(20):  # pairs (i, i+1): every group shares an image with the next one
            yield sample(f"r{i}", image=images(i, i + 1), question="<image> then <image>?", group=f"g{i}")

    build({"s": list_source("linked", linked)}, tmp_path / "ds", tmp_path)
    assert len({r.split for r in load_records(tmp_path / "ds")}) == 1


def test_count_mismatches_and_missing_images_are_quarantined_naming_record_and_field(
    tmp_path: Path, list_source: Callable
) -> None:
    missing = tmp_path / "gone.png"

    def bad(ctx: SourceContext) -> Iterator[SourceSample | Quarantined]:
        yield sample("ok", pixels(0))
        yield sample("few", image=images(1, 2), question="Compare <image> with the other one.")
        yield sample("many", image=images(1, 2), question="<image><image><image> which?")
        yield sample("text", image=None, modality="other", question="<image>\nWhat is this?")
        yield sample("answer", pixels(3), answer="see <image>")
        yield sample("gen", image=None, question="Upscale.", task="generation", kind="super_resolution",
                     target_image=images(4)[0])  # fmt: skip
        yield sample(
            "lost", image=[images(5)[0], SourceImage(key="gone.png", path=missing)], question="<image><image>?"
        )

    report = build({"s": list_source("bad", bad)}, tmp_path / "ds", tmp_path)
    reasons = {q["key"]: q["reason"] for q in report.quarantined}
    assert [r.id for r in load_records(tmp_path / "ds")] == ["s/ok"]
    assert reasons == {
        "record s/few": "field question: 1 '<image>' token(s) for 2 images in field image (one per image)",
        "record s/many": "field question: 3 '<image>' token(s) for 2 images in field image (one per image)",
        "record s/text": "field question: 1 '<image>' token(s) but the sample has no image (text-only)",
        "record s/answer": "field answer holds '<image>' (only the question marks images)",
        "record s/gen": "field image: a 'super_resolution' generation sample needs at least one input image",
        "record s/lost": f"field image[1] (2 of 2): image gone.png: file {missing} does not exist",
    }


def test_cross_source_duplicates_merge_only_with_the_same_images_in_the_same_order(
    tmp_path: Path, list_source: Callable
) -> None:
    question = "Compare <image> with <image>."

    def first(ctx: SourceContext) -> Iterator[SourceSample]:
        yield sample("a", image=images(1, 2), question=question, group="g1")

    def second(ctx: SourceContext) -> Iterator[SourceSample]:
        yield sample("a", image=images(1, 2), question=question, group="g1")  # the same record: merged
        yield sample("b", image=images(2, 1), question=question, group="g2")  # other order: another record
        yield sample("c", image=images(1, 3), question=question, group="g3")  # another second image

    report = build({"s": list_source("first", first), "t": list_source("second", second)}, tmp_path / "ds", tmp_path)
    assert [r.id for r in load_records(tmp_path / "ds")] == ["s/a", "t/b", "t/c"] and report.duplicates_merged == 1
