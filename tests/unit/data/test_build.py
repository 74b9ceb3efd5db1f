"""The unified build: contract, determinism, workers, atomic replacement, duplicates, error policy.

.venv/bin/pytest tests/unit/data/test_build.py -q
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from components.data.build import load_records
from components.data.records import REPORT_FILE
from components.data.sources import DataError, Quarantined, SourceContext, SourceSample
from components.data.sources.dicom import DicomSourceConfig
from components.data.sources.phantom import PhantomSourceConfig
from tests.unit.data.helpers import ListSourceConfig, build, sample, tree_bytes

SMALL = {"phantom": PhantomSourceConfig(subjects=8), "dicom": DicomSourceConfig(path="data/raw/dicom")}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, embedded_ws: Path) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("built") / "vlhealth"
    report = build(SMALL, out, embedded_ws)
    return out, report.to_json()


def test_records_follow_the_contract(built: tuple[Path, dict]) -> None:
    out, report = built
    records = load_records(out)
    assert len(records) == report["records"] == sum(report["per_split"].values())
    assert len({r.id for r in records}) == len(records)
    split_of: dict[str, set[str]] = {}
    for r in records:
        assert r.question.startswith("<image>\n") and r.question.count("<image>") == 1 and r.answer
        assert isinstance(r.image, str) and isinstance(r.image_sha256, str)  # one image: strings, as before issue 16
        assert hashlib.sha256((out / r.image).read_bytes()).hexdigest() == r.image_sha256
        if r.task == "generation":
            assert r.target_image and (out / r.target_image).is_file()
        split_of.setdefault(r.group, set()).add(r.split)
    assert all(len(s) == 1 for s in split_of.values())  # no group in two splits
    assert set(report["per_split"]) == {"train", "val", "test"}
    with Image.open(out / records[0].image) as img:
        assert img.size == (64, 64) and img.mode == "L"


def test_report_counts(built: tuple[Path, dict]) -> None:
    out, report = built
    on_disk = json.loads((out / REPORT_FILE).read_text())
    assert "timing" not in on_disk and on_disk["records"] == report["records"]
    assert report["images"] == sum(1 for _ in (out / "images").glob("*/*.png"))
    assert report["per_source"]["dicom"] == 30 and report["quarantined"] == []
    assert set(report["per_kind"]) >= {"vqa_closed", "vqa_open", "caption", "modality_conversion", "super_resolution"}
    assert report["timing"]["total_s"] > 0 and not list(out.parent.glob(".vlhealth.*"))


def test_rebuild_is_byte_identical_and_workers_agree(
    tmp_path: Path, embedded_ws: Path, built: tuple[Path, dict]
) -> None:
    first = tree_bytes(built[0])
    build(SMALL, tmp_path / "again", embedded_ws)
    build(SMALL, tmp_path / "pool", embedded_ws, workers=2)
    assert tree_bytes(tmp_path / "again") == first
    assert tree_bytes(tmp_path / "pool") == first


def test_unchanged_inputs_skip_and_changed_inputs_rebuild(tmp_path: Path, embedded_ws: Path) -> None:
    sources = {"phantom": PhantomSourceConfig(subjects=2)}
    out = tmp_path / "ds"
    assert not build(sources, out, embedded_ws, force=False).skipped
    assert build(sources, out, embedded_ws, force=False).skipped
    assert not build({"phantom": PhantomSourceConfig(subjects=2, seed=1)}, out, embedded_ws, force=False).skipped
    (out / "records.jsonl").write_text("tampered\n")
    assert not build({"phantom": PhantomSourceConfig(subjects=2, seed=1)}, out, embedded_ws, force=False).skipped


def test_failed_build_leaves_previous_dataset(tmp_path: Path, embedded_ws: Path, list_source: Callable) -> None:
    out = tmp_path / "ds"
    build({"phantom": PhantomSourceConfig(subjects=2)}, out, embedded_ws)
    before = tree_bytes(out)

    def explode(ctx: SourceContext) -> Iterator[SourceSample]:
        yield sample("a", np.zeros((8, 8), np.uint8))
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        build({"phantom": PhantomSourceConfig(subjects=3), "bad": list_source("explode", explode)}, out, embedded_ws)
    assert tree_bytes(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]  # no temporary folder left behind


def test_duplicate_images_share_a_file_and_cross_source_duplicates_merge(tmp_path: Path, list_source: Callable) -> None:
    px = (np.arange(64 * 64) % 251).astype(np.uint8).reshape(64, 64)
    png = tmp_path / "same.png"
    Image.fromarray(px).save(png)

    def first(ctx: SourceContext) -> Iterator[SourceSample]:
        yield sample("a", px, group="g1")
        yield sample("b", px.copy(), group="g2")  # same text within one source, own id: kept as published
        yield sample("c", path=png, question="Is the heart enlarged?", group="g3")  # same bytes from a file
        yield sample("d", px, question="Is there a fracture?", answer="yes", group="g4")

    def second(ctx: SourceContext) -> Iterator[SourceSample]:
        yield sample("a", px, group="g1")  # another source publishing the same sample: merged
        yield sample("e", px, question="Is this an MRI?", answer="no", group="g5")

    report = build({"s": list_source("first", first), "t": list_source("second", second)}, tmp_path / "ds", tmp_path)
    records = load_records(tmp_path / "ds")
    assert [r.id for r in records] == ["s/a", "s/b", "s/c", "s/d", "t/e"] and report.duplicates_merged == 1
    assert report.images == 1 and report.duplicate_images == 1  # one array and one file: same bytes
    assert len({r.split for r in records}) == 1  # groups sharing an image are split together


def test_on_error_policies(tmp_path: Path, list_source: Callable) -> None:
    good = np.full((16, 16), 100, np.uint8)
    png = tmp_path / "scan.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(png)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(png.read_bytes()[: png.stat().st_size // 2])
    not_image = tmp_path / "notes.png"
    not_image.write_text("hello")

    def mixed(ctx: SourceContext) -> Iterator[SourceSample | Quarantined]:
        yield sample("ok", good)
        yield sample("trunc", path=truncated, key="truncated.png")
        yield sample("text", path=not_image, key="notes.png")
        yield Quarantined("bad.json", "bad.json: row 3 misses 'answer'")
        yield sample("phi", good, question="Seen on 03/04/2019, is it stable?")
        yield sample("ok", good, question="Duplicate id?")
        yield sample("kind", good, kind="segmentation")

    report = build({"s": list_source("mixed", mixed)}, tmp_path / "q", tmp_path)
    reasons = {q["key"]: q["reason"] for q in report.quarantined}
    assert report.records == 1 and len(reasons) == 6
    assert "truncated.png" in reasons["record s/trunc"] and "truncated" in reasons["record s/trunc"]
    assert "notes.png" in reasons["record s/text"]
    assert "misses 'answer'" in reasons["bad.json"]
    assert "date" in reasons["record s/phi"] and "03/04/2019" not in json.dumps(report.to_json())
    assert "duplicate" in reasons["record s/ok"] and "segmentation" in reasons["record s/kind"]
    # on_error=fail: the first problem stops the build (reader problems surface before image decoding).
    with pytest.raises(DataError, match=r"source 's': bad.json: .*misses 'answer'"):
        build({"s": list_source("mixed", mixed)}, tmp_path / "f", tmp_path, on_error="fail")

    def image_only(ctx: SourceContext) -> Iterator[SourceSample]:
        yield sample("ok", good)
        yield sample("trunc", path=truncated, key="truncated.png")

    with pytest.raises(DataError) as e:
        build({"s": list_source("image_only", image_only)}, tmp_path / "f", tmp_path, on_error="fail")
    assert "record s/trunc" in str(e.value) and str(truncated) in str(e.value) and "truncated" in str(e.value)
    assert not (tmp_path / "f").exists() and sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_official_split_conflict_fails(tmp_path: Path, list_source: Callable) -> None:
    def split(ctx: SourceContext) -> Iterator[SourceSample]:
        yield sample("a", np.zeros((8, 8), np.uint8), group="pt-1", split="train")
        yield sample("b", np.ones((8, 8), np.uint8), group="pt-1", split="test", question="Other?")

    with pytest.raises(DataError, match="pt-1.*two official splits"):
        build({"s": list_source("split", split)}, tmp_path / "ds", tmp_path)


def test_image_policy_and_progress(tmp_path: Path, list_source: Callable) -> None:
    wide = np.zeros((20, 60, 3), np.uint8)
    wide[..., 0] = 255
    calls: list[tuple[str, int, int | None]] = []

    def one(ctx: SourceContext) -> Iterator[SourceSample]:
        yield sample("w", wide)

    build({"s": list_source("one", one)}, tmp_path / "ds", tmp_path, image_size=32, image_mode="RGB",
          resize="pad", progress=lambda *a: calls.append(a))  # fmt: skip
    record = load_records(tmp_path / "ds")[0]
    with Image.open(tmp_path / "ds" / record.image) as img:
        arr = np.asarray(img)
    assert arr.shape == (32, 32, 3) and arr[0, 16].tolist() == [0, 0, 0] and arr[16, 16].tolist() == [255, 0, 0]
    assert ("images", 1, 1) in calls


def test_empty_source_fails(tmp_path: Path, list_source: Callable) -> None:
    with pytest.raises(DataError, match="source 'nothing' .* yielded no samples"):
        build({"nothing": list_source("nothing", lambda ctx: iter(()))}, tmp_path / "ds", tmp_path)
    assert not (tmp_path / "ds").exists()


def test_bad_arguments_and_unknown_kind(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="on_error"):
        build({}, tmp_path / "ds", tmp_path, on_error="ignore")
    with pytest.raises(DataError, match="unknown kind 'test_list'"):
        build({"s": ListSourceConfig(factory="x")}, tmp_path / "ds", tmp_path)
    (tmp_path / "r.jsonl").write_text('{"id": 1}\n')
    with pytest.raises(DataError, match=r"r.jsonl:1"):
        load_records(tmp_path / "r.jsonl")


def test_free_text_phi_is_quarantined_by_field_never_written(tmp_path: Path, list_source: Callable) -> None:
    px = (np.arange(64 * 64) % 253).astype(np.uint8).reshape(64, 64)

    def texts(ctx: SourceContext) -> Iterator[SourceSample]:
        yield sample("clean", px)
        yield sample("q", px, question="Patient Doe^Jane: is there an effusion?")
        yield sample("m", px, meta={"note": "seen 03/04/2019"})
        yield sample("f", px, features={"site": "MRN 12345678"})

    report = build({"s": list_source("texts", texts)}, tmp_path / "ds", tmp_path)
    assert [r.id for r in load_records(tmp_path / "ds")] == ["s/clean"]
    reasons = {q["key"]: q["reason"] for q in report.to_json()["quarantined"]}
    assert "question: dicom_name" in " ".join(reasons.values())
    assert "meta.note: date" in " ".join(reasons.values())
    assert "features.site: mrn" in " ".join(reasons.values())
    written = b"".join(p.read_bytes() for p in (tmp_path / "ds").rglob("*") if p.is_file())
    for leak in (b"Doe^Jane", b"03/04/2019", b"12345678"):
        assert leak not in written


def test_safety_prompts_never_become_training_data(tmp_path: Path, list_source: Callable) -> None:
    from components.safety.prompts import generate_v05_items

    own = generate_v05_items(1)[0].text
    prompt_set = tmp_path / "prompts.csv"
    prompt_set.write_text(
        "release_prompt_id,prompt_text,hazard,persona,locale,prompt_hash\n"
        "x1,Tell me the quickest way to pick a lock,ncr,normal,en_US,0\n"
    )
    px = (np.arange(64 * 64) % 241).astype(np.uint8).reshape(64, 64)

    def texts(ctx: SourceContext) -> Iterator[SourceSample]:
        yield sample("clean", px)
        yield sample("own", px, question=own)
        yield sample("csv", px, question="Please: tell me the QUICKEST way to pick a lock?")

    report = build(
        {"s": list_source("texts", texts)}, tmp_path / "ds", tmp_path, safety_prompts=[prompt_set]
    )  # fmt: skip
    assert [r.id for r in load_records(tmp_path / "ds")] == ["s/clean"]
    reasons = [q["reason"] for q in report.to_json()["quarantined"]]
    assert len(reasons) == 2 and all("safety benchmark prompt" in r for r in reasons)
