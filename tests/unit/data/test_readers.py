"""Source readers: vqa_rad, slake, llava_json, medmnist.

Real-data facts on ../shared/data (skipped with a message where it is absent), the published formats on small
fixtures each test builds in tmp_path, and every bad input with the message it must give. Run::

    .venv/bin/pytest tests/unit/data/test_readers.py -q
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from components.data.sources import SOURCES, DataError, Quarantined, SourceContext, SourceSample
from components.data.sources.manifest import normalise_modality
from components.data.sources.vqa_rad import infer_modalities

SHARED_DATA = (Path(__file__).resolve().parents[3] / ".." / "shared" / "data").resolve()
KINDS = ("vqa_rad", "slake", "llava_json", "medmnist")


def shared(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"needs {path} (../shared/data beside the checkout is absent)")
    return path


def read(kind: str, root: Path, key: bytes = b"test-key", **cfg: Any) -> tuple[list[SourceSample], list[Quarantined]]:
    spec = SOURCES[kind]
    ctx = SourceContext(name=kind, root=root, deid_key=key, seed=0)
    out = list(spec.reader(spec.config(**cfg), ctx))
    samples = [o for o in out if isinstance(o, SourceSample)]
    quarantined = [o for o in out if isinstance(o, Quarantined)]
    assert len(samples) + len(quarantined) == len(out)
    return samples, quarantined


def jpg(path: Path, shade: int = 128) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (shade, shade, shade)).save(path)
    return path


def only_reason(quarantined: list[Quarantined]) -> str:
    assert len(quarantined) == 1, quarantined
    return quarantined[0].reason


# --- registration and config ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_reader_is_registered_with_a_strict_described_config(kind: str) -> None:
    config = SOURCES[kind].config
    assert config.model_config.get("extra") == "forbid" and config.model_config.get("frozen")
    assert config.model_fields["kind"].default == kind
    undocumented = [name for name, f in config.model_fields.items() if not f.description]
    assert not undocumented
    with pytest.raises(ValidationError, match="not_a_field"):
        config(path="x", license="MIT", not_a_field=1)


def test_source_configs_validate_through_the_schema_union() -> None:
    from components.config.schema import DataConfig

    data = DataConfig(
        sources={
            "rad": {"kind": "vqa_rad", "path": "/data/vqa_rad"},
            "slake": {"kind": "slake", "path": "data/raw/Slake1.0", "language": "zh"},
            "med": {"kind": "llava_json", "path": "a.json", "license": "CC-BY-NC-4.0", "record_kind": "auto"},
            "breast": {"kind": "medmnist", "path": "b.npz", "answers": {"0": "yes", "1": "no"}},
        }
    )
    assert {name: type(cfg).__name__ for name, cfg in data.sources.items()} == {
        "rad": "VqaRadSourceConfig",
        "slake": "SlakeSourceConfig",
        "med": "LlavaJsonSourceConfig",
        "breast": "MedmnistSourceConfig",
    }
    assert data.sources["breast"].answers == {0: "yes", 1: "no"}


def test_modality_labels_map_onto_the_allowed_set() -> None:
    labels = ["CT", "X-Ray", "MRI", "Computed Tomography", "Magnetic Resonance Imaging", "Ultrasound"]
    assert [normalise_modality(x) for x in labels] == ["CT", "X-ray", "MRI", "CT", "MRI", "ultrasound"]
    assert normalise_modality("Microscopy Images") == "pathology"
    assert normalise_modality("Digital Photography") == "other"


# --- vqa_rad on the real release --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vqa_rad() -> list[SourceSample]:
    samples, quarantined = read("vqa_rad", Path("/nonexistent"), path=str(shared("vqa_rad")))
    assert quarantined == []
    return samples


@pytest.mark.shared_data
def test_vqa_rad_yields_2248_samples_over_314_images(vqa_rad: list[SourceSample]) -> None:
    folder = shared("vqa_rad", "images")
    assert len(vqa_rad) == 2248
    assert len({s.uid for s in vqa_rad}) == 2248
    referenced = {s.image.key for s in vqa_rad}
    assert len(referenced) == 314
    assert all(s.group == s.image.key and s.split is None for s in vqa_rad)  # re-split by image
    files = {p.name for p in folder.glob("*.jpg")}
    assert len(files) == 315 and files - referenced == {"synpic35356.jpg"}  # the one unreferenced image
    digests = {hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.glob("*.jpg")}
    assert len(digests) == 315  # no byte-identical pair: 314 is not a de-duplication effect
    assert Counter(s.kind for s in vqa_rad) == {"vqa_closed": 1299, "vqa_open": 949}  # incl. two "CLOSED "
    assert Counter(s.body_part for s in vqa_rad) == {"chest": 794, "abdomen": 739, "head": 715}
    assert all(isinstance(s.answer, str) and s.answer and s.question for s in vqa_rad)


@pytest.mark.shared_data
def test_vqa_rad_modality_comes_from_the_release_and_its_answers(vqa_rad: list[SourceSample]) -> None:
    per_image = {s.image.key: (s.body_part, s.modality, s.meta["modality_from"]) for s in vqa_rad}
    assert {m for part, m, _ in per_image.values() if part == "chest"} == {"X-ray"}
    assert {m for part, m, _ in per_image.values() if part == "abdomen"} == {"CT"}
    head = Counter(m for part, m, _ in per_image.values() if part == "head")
    assert set(head) == {"CT", "MRI", "other"} and head["MRI"] > head["CT"] and head["other"] < 50
    assert per_image["synpic31116.jpg"][1:] == ("MRI", "qa")  # "Is this a CT or an MRI?" -> MRI
    assert per_image["synpic16520.jpg"][1:] == ("CT", "qa")  # "Is this a contrast CT or a non-contrast CT?"


@pytest.mark.shared_data
def test_vqa_rad_official_split_only_when_asked() -> None:
    samples, _ = read("vqa_rad", Path("/"), path=str(shared("vqa_rad")), use_official_split=True)
    assert Counter(s.split for s in samples) == {"train": 1797, "test": 451}
    test_images = {s.group for s in samples if s.split == "test"}
    train_images = {s.group for s in samples if s.split == "train"}
    assert len(test_images) == 203 and len(test_images & train_images) == 202  # why the default re-splits


# --- vqa_rad on fixtures: the format and every bad input -------------------------------------------------


def rad_row(qid: int, image: str = "a.jpg", **over: Any) -> dict[str, Any]:
    row = {
        "qid": str(qid),
        "image_name": image,
        "image_organ": "CHEST",
        "question": "Is there a pneumothorax?",
        "answer": "No",
        "answer_type": "CLOSED",
        "question_type": "PRES",
        "phrase_type": "freeform",
    }
    return {**row, **over}


def rad_folder(tmp_path: Path, rows: Any, *, raw: str | None = None) -> Path:
    root = tmp_path / "vqa_rad"
    jpg(root / "images" / "a.jpg", 10)
    jpg(root / "images" / "b.jpg", 20)
    text = raw if raw is not None else json.dumps(rows, indent=1)
    (root / "VQA_RAD Dataset Public.json").write_text(text)
    return root


def test_vqa_rad_fixture_maps_the_fields(tmp_path: Path) -> None:
    root = rad_folder(tmp_path, [rad_row(0), rad_row(1, "b.jpg", answer=5, answer_type="OPEN", image_organ="ABD")])
    samples, quarantined = read("vqa_rad", tmp_path, path="vqa_rad", site="h1")  # relative to the workspace
    assert quarantined == []
    a, b = samples
    assert (a.uid, a.kind, a.body_part, a.modality, a.answer) == ("q0", "vqa_closed", "chest", "X-ray", "No")
    assert (b.kind, b.body_part, b.modality, b.answer, b.group) == ("vqa_open", "abdomen", "CT", "5", "b.jpg")
    assert a.image.path == (root / "images" / "a.jpg").resolve() and a.image.pixels is None
    assert a.features == {"task": "comprehension", "modality": "X-ray", "body_part": "chest", "site": "h1"}


def test_vqa_rad_head_modality_evidence() -> None:
    def head(image: str, question: str, answer: str, qtype: str = "MODALITY", atype: str = "CLOSED") -> dict:
        return rad_row(0, image, image_organ="HEAD", question=question, answer=answer, question_type=qtype,
                       answer_type=atype)  # fmt: skip

    rows = [
        head("denied_ct.jpg", "Is this a CT image?", "no"),
        head("open.jpg", "What imaging modality was used?", "MR - FLAIR", atype="OPEN"),
        head("choice.jpg", "Is this a CT or an MRI?", "CT"),
        head("t1_no.jpg", "Is this a T1 weighted image?", "no"),  # still an MR sequence question
        head("nothing.jpg", "Is there a midline shift?", "yes", qtype="PRES"),
        head("negated.jpg", "What type of imaging does this not represent?", "MRI", atype="OPEN"),
        rad_row(0, "chest.jpg", question="Is this a CT image?", answer="no"),
    ]
    got = {image: mod for image, (mod, _) in infer_modalities(rows).items()}
    assert got == {
        "denied_ct.jpg": "MRI",
        "open.jpg": "MRI",
        "choice.jpg": "CT",
        "t1_no.jpg": "MRI",
        "nothing.jpg": "other",
        "negated.jpg": "other",
        "chest.jpg": "X-ray",
    }


def test_vqa_rad_malformed_json_names_file_and_line(tmp_path: Path) -> None:
    rad_folder(tmp_path, None, raw='[\n {"qid": "0",\n  "image_name" "a.jpg"}\n]')
    with pytest.raises(DataError, match=r"VQA_RAD Dataset Public\.json: invalid JSON at line 3, column 16"):
        read("vqa_rad", tmp_path, path="vqa_rad")


@pytest.mark.parametrize(
    ("content", "message"),
    [([], "no records"), ({"qid": "0"}, "expected a JSON list of records, found a dict")],
)
def test_vqa_rad_empty_or_not_a_list_is_a_data_error(tmp_path: Path, content: Any, message: str) -> None:
    rad_folder(tmp_path, content)
    with pytest.raises(DataError, match=message):
        read("vqa_rad", tmp_path, path="vqa_rad")


def test_vqa_rad_missing_folder_or_json_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        read("vqa_rad", tmp_path, path="nowhere")
    rad_folder(tmp_path, [rad_row(0)])
    with pytest.raises(DataError, match="other.json: VQA-RAD JSON not found"):
        read("vqa_rad", tmp_path, path="vqa_rad", json_name="other.json")


def test_vqa_rad_row_missing_fields_is_quarantined_by_file_row_and_qid(tmp_path: Path) -> None:
    broken = rad_row(7)
    del broken["answer"]
    rad_folder(tmp_path, [rad_row(0), broken, "not an object"])
    samples, quarantined = read("vqa_rad", tmp_path, path="vqa_rad")
    assert [s.uid for s in samples] == ["q0"]
    reasons = [q.reason for q in quarantined]
    assert reasons[0] == "VQA_RAD Dataset Public.json row 1 (qid 7): missing required field(s) answer"
    assert reasons[1].startswith("VQA_RAD Dataset Public.json row 2: missing required field(s) qid, image_name")


def test_vqa_rad_missing_image_is_quarantined(tmp_path: Path) -> None:
    rad_folder(tmp_path, [rad_row(0), rad_row(1, "gone.jpg")])
    samples, quarantined = read("vqa_rad", tmp_path, path="vqa_rad")
    assert len(samples) == 1
    assert "row 1 (qid 1): image 'gone.jpg' not found in" in only_reason(quarantined)


@pytest.mark.parametrize(
    ("image", "message"),
    [
        ("../outside.jpg", "escapes the source root"),
        ("/etc/passwd", "is absolute"),
        ("link.jpg", "escapes the source root"),  # a symlink inside images/ that points outside
    ],
)
def test_vqa_rad_path_escaping_the_image_folder_is_refused(tmp_path: Path, image: str, message: str) -> None:
    root = rad_folder(tmp_path, [rad_row(0), rad_row(1, image)])
    jpg(root / "outside.jpg")  # exists, so only the escape can be the reason
    (root / "images" / "link.jpg").symlink_to(jpg(tmp_path / "elsewhere.jpg"))
    samples, quarantined = read("vqa_rad", tmp_path, path="vqa_rad")
    assert [s.uid for s in samples] == ["q0"]
    reason = only_reason(quarantined)
    assert reason.startswith("refused:") and message in reason and repr(image) in reason


def test_vqa_rad_duplicate_qid_keeps_the_first(tmp_path: Path) -> None:
    rad_folder(tmp_path, [rad_row(3), rad_row(3, "b.jpg"), rad_row(4, answer_type="MAYBE")])
    samples, quarantined = read("vqa_rad", tmp_path, path="vqa_rad")
    assert [(s.uid, s.image.key) for s in samples] == [("q3", "a.jpg")]
    assert [q.reason for q in quarantined] == [
        "VQA_RAD Dataset Public.json row 1 (qid 3): duplicate qid '3' (the first row with it is kept)",
        "VQA_RAD Dataset Public.json row 2 (qid 4): answer_type 'MAYBE' is neither CLOSED nor OPEN",
    ]


# --- slake --------------------------------------------------------------------------------------------------


def slake_row(qid: int, img_id: int, lang: str = "en", **over: Any) -> dict[str, Any]:
    row = {
        "img_id": img_id,
        "img_name": f"xmlab{img_id}/source.jpg",
        "question": "What modality is used to take this image?",
        "answer": "CT",
        "q_lang": lang,
        "location": "Lung",
        "modality": "CT",
        "answer_type": "OPEN",
        "base_type": "vqa",
        "content_type": "Modality",
        "triple": ["vhead", "_", "_"],
        "qid": qid,
    }
    return {**row, **over}


def slake_folder(tmp_path: Path, train: list[Any], validate: list[Any], test: list[Any]) -> Path:
    root = tmp_path / "Slake1.0"
    for img_id in (1, 2, 3):
        jpg(root / "imgs" / f"xmlab{img_id}" / "source.jpg", 40 * img_id)
    for name, rows in (("train", train), ("validate", validate), ("test", test)):
        (root / f"{name}.json").write_text(json.dumps(rows))
    return root


def test_slake_reads_the_english_subset_with_official_splits(tmp_path: Path) -> None:
    slake_folder(
        tmp_path,
        [slake_row(0, 1), slake_row(1, 1, "zh", question="这是什么模态？"), slake_row(2, 1, answer_type="CLOSED",
         question="Is this a CT?", answer="Yes", location="Chest_heart", content_type="Organ")],
        [slake_row(10, 2, modality="X-Ray", answer="X-Ray", location="Chest_lung")],
        [slake_row(20, 3, modality="MRI", location="Brain_Tissue", answer="MRI")],
    )  # fmt: skip
    samples, quarantined = read("slake", tmp_path, path="Slake1.0")
    assert quarantined == []
    got = [(s.uid, s.split, s.group, s.kind, s.modality, s.body_part) for s in samples]
    assert got == [
        ("q0", "train", "xmlab1", "vqa_open", "CT", "chest"),
        ("q2", "train", "xmlab1", "vqa_closed", "CT", "chest"),
        ("q10", "val", "xmlab2", "vqa_open", "X-ray", "chest"),
        ("q20", "test", "xmlab3", "vqa_open", "MRI", "head"),
    ]
    assert samples[1].meta["content_type"] == "Organ" and samples[1].image.key == "xmlab1/source.jpg"
    zh, _ = read("slake", tmp_path, path="Slake1.0", language="zh", use_official_split=False)
    assert [(s.uid, s.split, s.question) for s in zh] == [("q1", None, "这是什么模态？")]


def test_slake_image_in_two_official_splits_is_refused_unless_resplit(tmp_path: Path) -> None:
    slake_folder(tmp_path, [slake_row(0, 1)], [slake_row(1, 1)], [slake_row(2, 3)])
    with pytest.raises(DataError, match="xmlab1 occur in more than one official split; set use_official_split"):
        read("slake", tmp_path, path="Slake1.0")
    samples, _ = read("slake", tmp_path, path="Slake1.0", use_official_split=False)
    assert len(samples) == 3 and {s.split for s in samples} == {None}


def test_slake_bad_rows_are_quarantined_with_file_row_and_qid(tmp_path: Path) -> None:
    no_answer = slake_row(5, 1)
    del no_answer["answer"]
    slake_folder(
        tmp_path,
        [slake_row(0, 1), no_answer, slake_row(0, 1), slake_row(6, 9), slake_row(7, 1, img_name="../../x.jpg")],
        [],
        [slake_row(8, 3, img_name="/etc/passwd")],
    )
    jpg(tmp_path / "x.jpg")
    samples, quarantined = read("slake", tmp_path, path="Slake1.0")
    assert [s.uid for s in samples] == ["q0"]
    reasons = [q.reason for q in quarantined]
    assert reasons[0] == "train.json row 1 (qid 5): missing required field(s) answer"
    assert reasons[1] == "train.json row 2 (qid 0): duplicate qid '0' (the first row with it is kept)"
    assert "train.json row 3 (qid 6): image 'xmlab9/source.jpg' not found" in reasons[2]
    assert reasons[3].startswith("refused: train.json row 4 (qid 7) img_name: path '../../x.jpg' escapes")
    assert reasons[4].startswith("refused: test.json row 0 (qid 8) img_name: path '/etc/passwd' is absolute")


def test_slake_source_level_problems_are_data_errors(tmp_path: Path) -> None:
    root = slake_folder(tmp_path, [slake_row(0, 1, "zh")], [], [])
    with pytest.raises(DataError, match="no rows with q_lang 'en' in train.json, validate.json, test.json"):
        read("slake", tmp_path, path="Slake1.0")
    (root / "validate.json").write_text('[{"qid": 1,}]')
    with pytest.raises(DataError, match=r"validate\.json: invalid JSON at line 1, column 12"):
        read("slake", tmp_path, path="Slake1.0")
    (root / "test.json").unlink()
    with pytest.raises(DataError, match="test.json: SLAKE JSON not found"):
        read("slake", tmp_path, path="Slake1.0", files=("train.json", "test.json"))


# --- llava_json ---------------------------------------------------------------------------------------------


def conv(*texts: str) -> list[dict[str, str]]:
    return [{"from": "human" if i % 2 == 0 else "gpt", "value": t} for i, t in enumerate(texts)]


def llava_file(tmp_path: Path, records: list[Any], name: str = "data.json") -> Path:
    jpg(tmp_path / "med" / "images" / "a.jpg", 10)
    jpg(tmp_path / "med" / "images" / "b.jpg", 20)
    path = tmp_path / "med" / name
    if name.endswith(".jsonl"):
        path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    else:
        path.write_text(json.dumps(records))
    return path


def test_llava_json_splits_multi_turn_records_into_pairs(tmp_path: Path) -> None:
    llava_file(
        tmp_path,
        [
            {"id": "r1", "image": "images/a.jpg", "conversations": conv("<image>\nWhat is shown?", "A chest CT.",
                                                                         "Is there an effusion?", "No.")},
            {"id": "r2", "image": ["images/b.jpg"], "modality": "Magnetic Resonance Imaging", "body_part": "Brain",
             "conversations": conv("Describe the image.\n<image>", "An axial MRI of the brain.")},
        ],
    )  # fmt: skip
    samples, quarantined = read("llava_json", tmp_path, path="med/data.json", license="CC-BY-NC-4.0", modality="CT")
    assert quarantined == []
    got = [(s.uid, s.question, s.answer, s.group, s.modality, s.body_part, s.kind) for s in samples]
    assert got == [
        ("r1-0", "What is shown?", "A chest CT.", "images/a.jpg", "CT", "unknown", "vqa_open"),
        ("r1-1", "Is there an effusion?", "No.", "images/a.jpg", "CT", "unknown", "vqa_open"),
        ("r2-0", "Describe the image.", "An axial MRI of the brain.", "images/b.jpg", "MRI", "brain", "vqa_open"),
    ]
    assert all(s.license == "CC-BY-NC-4.0" and s.split is None for s in samples)
    auto, _ = read("llava_json", tmp_path, path="med/data.json", license="x", record_kind="auto")
    assert [s.kind for s in auto] == ["vqa_open", "vqa_closed", "vqa_open"]


def test_llava_json_multi_image_and_text_only_records(tmp_path: Path) -> None:
    llava_file(
        tmp_path,
        [
            {"id": "m", "image": ["images/a.jpg", "images/b.jpg"], "modality": "CT",
             "conversations": conv("Hello.", "Hi.", "Compare <image> with the prior.", "Larger.",
                                   "And now <image>?", "Smaller.", "Both?", "Stable.")},
            {"id": "t", "modality": "CT", "conversations": conv("What does CT stand for?", "Computed tomography.")},
            {"id": "n", "image": None, "conversations": conv("Define MRI.", "Magnetic resonance imaging.")},
        ],
    )  # fmt: skip
    samples, quarantined = read("llava_json", tmp_path, path="med/data.json", license="x")
    assert quarantined == []
    keys = {s.uid: [i.key for i in s.images] for s in samples}
    assert keys == {"m-0": [], "m-1": ["images/a.jpg"], "m-2": ["images/a.jpg", "images/b.jpg"],
                    "m-3": ["images/a.jpg", "images/b.jpg"], "t-0": [], "n-0": []}  # fmt: skip
    by_uid = {s.uid: s for s in samples}
    # a pair carries the images shown so far: earlier turns' tokens go in front, its own stay in place
    assert by_uid["m-1"].question == "Compare <image> with the prior."
    assert by_uid["m-2"].question == "<image>\nAnd now <image>?"
    assert by_uid["m-3"].question == "<image>\n<image>\nBoth?"
    assert by_uid["m-0"].image is None and by_uid["m-0"].modality == "other"
    assert by_uid["m-2"].modality == "CT" and by_uid["m-2"].group == "images/a.jpg"
    # text-only records: no image, modality 'other' whatever the record says, grouped by record id
    assert (by_uid["t-0"].image, by_uid["t-0"].modality, by_uid["t-0"].group) == (None, "other", "text/t")
    assert by_uid["t-0"].features["modality"] == "other" and by_uid["n-0"].group == "text/n"


def test_llava_json_multi_image_and_text_only_records_build_and_validate(tmp_path: Path) -> None:
    from components.validation import validate_dataset

    llava_file(
        tmp_path,
        [
            {"id": "one", "image": "images/a.jpg", "conversations": conv("What is shown?\n<image>", "A shade.")},
            {"id": "two", "image": ["images/a.jpg", "images/b.jpg"],
             "conversations": conv("<image>\n<image>\nWhich is darker?", "The first.")},
            {"id": "text", "conversations": conv("What does CT stand for?", "Computed tomography.")},
            {"id": "turns", "image": ["images/b.jpg", "images/a.jpg"],
             "conversations": conv("Is <image> dark?", "Yes.", "And <image>?", "No.")},
        ],
    )  # fmt: skip
    report, records = build(tmp_path, "med", SOURCES["llava_json"].config(path="med/data.json", license="x"))
    by_id = {r.id: r for r in records}
    assert report.quarantined == [] and report.images == 2
    assert by_id["med/one-0"].question == "<image>\nWhat is shown?" and isinstance(by_id["med/one-0"].image, str)
    assert by_id["med/two-0"].question == "<image>\n<image>\nWhich is darker?"
    assert isinstance(by_id["med/two-0"].image, list) and by_id["med/two-0"].image[0] == by_id["med/one-0"].image
    assert by_id["med/text-0"].image is None and by_id["med/text-0"].modality == "other"
    # the first pair of 'turns' shows one image: stored as one (a string, its token in front, as LLaVA does)
    first, second = by_id["med/turns-0"], by_id["med/turns-1"]
    assert first.image == by_id["med/two-0"].image[1] and first.question == "<image>\nIs  dark?"
    assert second.image == by_id["med/two-0"].image[::-1] and second.question == "<image>\nAnd <image>?"
    assert len({r.split for r in records if r.image}) == 1  # 'one' and 'two' share images/a.jpg
    result = validate_dataset(tmp_path / "out", split_tolerance=1.0)
    assert result.success, result.summary_lines()


def test_llava_json_patient_field_becomes_a_keyed_pseudonym(tmp_path: Path) -> None:
    records = [
        {"id": f"r{i}", "image": img, "patient_id": pid, "conversations": conv("Q?", "A")}
        for i, (img, pid) in enumerate([("images/a.jpg", "MRN-0042"), ("images/b.jpg", "MRN-0042")])
    ]
    llava_file(tmp_path, records)
    one, _ = read("llava_json", tmp_path, path="med/data.json", license="x")
    other_key, _ = read("llava_json", tmp_path, key=b"another", path="med/data.json", license="x")
    assert one[0].group == one[1].group and one[0].group.startswith("pt-")
    assert "0042" not in one[0].group and one[0].group != other_key[0].group


def test_llava_json_reads_json_lines_and_names_a_bad_line(tmp_path: Path) -> None:
    path = llava_file(tmp_path, [{"id": "r1", "image": "images/a.jpg", "conversations": conv("Q?", "A")}], "d.jsonl")
    samples, _ = read("llava_json", tmp_path, path=str(path), license="x")  # an absolute path works too
    assert [s.uid for s in samples] == ["r1-0"]
    path.write_text(path.read_text() + '{"id": "r2", "image": \n')
    with pytest.raises(DataError, match=r"d\.jsonl: invalid JSON on line 2, column 23"):
        read("llava_json", tmp_path, path=str(path), license="x")


def test_llava_json_bad_records_are_quarantined(tmp_path: Path) -> None:
    (tmp_path / "secret.jpg").write_bytes(b"x")
    llava_file(
        tmp_path,
        [
            {"id": "ok", "image": "images/a.jpg", "conversations": conv("Q?", "A")},
            {"id": "ok", "image": "images/b.jpg", "conversations": conv("Q?", "A")},
            {"id": "odd", "image": "images/a.jpg", "conversations": conv("Q?", "A", "Q2?")},
            {"id": "order", "image": "images/a.jpg", "conversations": conv("Q?", "A")[::-1]},
            {"id": "two", "image": ["images/a.jpg", "images/b.jpg"], "conversations": conv("Q?", "A")},
            {"id": "noconv", "image": "images/a.jpg"},
            {"id": "esc", "image": "../secret.jpg", "conversations": conv("Q?", "A")},
            {"id": "gone", "image": "images/c.jpg", "conversations": conv("Q?", "A")},
            {"id": "gone2", "image": ["images/a.jpg", "images/c.jpg"], "conversations": conv("<image><image>Q?", "A")},
            {"id": "esc2", "image": ["images/a.jpg", "../secret.jpg"], "conversations": conv("<image><image>Q?", "A")},
            {"id": "shape", "image": 5, "conversations": conv("Q?", "A")},
            {"id": "blank", "image": "", "conversations": conv("Q?", "A")},
            {"id": "text", "conversations": conv("<image>\nQ?", "A")},
            {"id": "once", "image": "images/a.jpg", "conversations": conv("<image>\nQ?", "A", "<image>\nQ2?", "B")},
            {"id": "three", "image": ["images/a.jpg", "images/b.jpg"], "conversations": conv("<image>" * 3 + "Q", "A")},
            {"id": "gpt", "image": "images/a.jpg", "conversations": conv("<image>\nQ?", "<image> A")},
        ],
    )  # fmt: skip
    samples, quarantined = read("llava_json", tmp_path, path="med/data.json", license="x")
    assert [s.uid for s in samples] == ["ok-0"]
    assert [q.reason for q in quarantined] == [
        "data.json record 1 (id ok): duplicate id 'ok' (the first record with it is kept)",
        "data.json record 2 (id odd): 3 turns; expected human/gpt pairs",
        "data.json record 3 (id order): turns 0-1 are not a human turn followed by a gpt turn",
        "data.json record 4 (id two): 0 '<image>' token(s) in the human turns for the 2 images in field 'image'",
        "data.json record 5 (id noconv): missing required field(s) conversations",
        f"refused: data.json record 6 (id esc): path '../secret.jpg' escapes the source root {tmp_path / 'med'}",
        f"data.json record 7 (id gone): image 'images/c.jpg' not found in {tmp_path / 'med'}",
        f"data.json record 8 (id gone2): field image[1]: image 'images/c.jpg' not found in {tmp_path / 'med'}",
        "refused: data.json record 9 (id esc2) field image[1]: path '../secret.jpg' escapes the source root "
        f"{tmp_path / 'med'}",
        "data.json record 10 (id shape): field 'image' must be a path, a list of paths, or absent (text-only)",
        "data.json record 11 (id blank): field 'image' must be a path, a list of paths, or absent (text-only)",
        "data.json record 12 (id text): 1 '<image>' token(s) in the human turns but no field 'image' (a text-only "
        "record)",
        "data.json record 13 (id once): 2 '<image>' tokens in the human turns for the 1 image in field 'image'",
        "data.json record 14 (id three): 3 '<image>' token(s) in the human turns for the 2 images in field 'image'",
        "data.json record 15 (id gpt): turn 1 (gpt) holds '<image>'; only human turns mark images",
    ]


def test_llava_json_empty_file_is_a_data_error(tmp_path: Path) -> None:
    llava_file(tmp_path, [])
    with pytest.raises(DataError, match=r"data\.json: no records \(empty source 'llava_json'\)"):
        read("llava_json", tmp_path, path="med/data.json", license="x")


# --- medmnist -------------------------------------------------------------------------------------------------


@pytest.mark.shared_data
def test_breastmnist_yields_780_samples_in_official_splits() -> None:
    samples, quarantined = read("medmnist", Path("/"), path=str(shared("breastmnist", "breastmnist.npz")))
    assert quarantined == [] and len(samples) == 780
    assert Counter(s.split for s in samples) == {"train": 546, "val": 78, "test": 156}  # PROVENANCE.md
    malignant = Counter(s.split for s in samples if s.answer == "yes")
    assert malignant == {"train": 147, "val": 21, "test": 42}
    assert all(s.meta["label_name"] == ("malignant" if s.answer == "yes" else "normal or benign") for s in samples)
    assert {(s.kind, s.modality, s.body_part, s.license) for s in samples} == {
        ("vqa_closed", "ultrasound", "breast", "CC-BY-4.0")
    }
    assert len({s.group for s in samples}) == 780
    assert all(s.image.pixels is not None and s.image.pixels.shape == (28, 28) for s in samples)
    by_content: dict[str, list[SourceSample]] = {}
    for s in samples:
        assert s.image.pixels is not None and s.image.pixels.dtype == np.uint8
        by_content.setdefault(hashlib.sha256(s.image.pixels.tobytes()).hexdigest(), []).append(s)
    twins = [[(s.uid, s.answer) for s in group] for group in by_content.values() if len(group) > 1]
    assert twins == [[("train-00115", "yes"), ("test-00076", "no")]]  # documented in the reader


def npz(tmp_path: Path, **arrays: Any) -> Path:
    path = tmp_path / "m.npz"
    np.savez(path, **arrays)
    return path


def test_medmnist_fixture_labels_and_split_switch(tmp_path: Path) -> None:
    images = np.arange(3 * 4 * 4, dtype=np.uint8).reshape(3, 4, 4)
    npz(tmp_path, train_images=images, train_labels=np.array([[0], [1], [2]]), test_images=images[:1],
        test_labels=np.array([1]))  # fmt: skip
    samples, quarantined = read("medmnist", tmp_path, path="m.npz", use_official_split=False, modality="US")
    assert [(s.uid, s.answer, s.split, s.modality) for s in samples] == [
        ("train-00000", "yes", None, "ultrasound"),
        ("train-00001", "no", None, "ultrasound"),
        ("test-00000", "no", None, "ultrasound"),
    ]
    assert only_reason(quarantined) == "m.npz train[2]: label 2 has no entry in 'answers'"
    assert np.array_equal(samples[1].image.pixels, images[1])


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"x": np.zeros(2)}, "no train_images/val_images/test_images arrays"),
        ({"train_images": np.zeros((2, 4, 4), np.uint8)}, "has train_images but no train_labels"),
        ({"train_images": np.zeros((2, 4, 4), np.uint8), "train_labels": np.zeros((2, 14), int)}, "multi-label"),
        ({"train_images": np.zeros((2, 4, 4), np.uint8), "train_labels": np.zeros(3, int)}, "2 train_images but 3"),
        ({"train_images": np.zeros((2, 4, 4)), "train_labels": np.zeros(2, int)}, "must be uint8"),
        ({"train_images": np.zeros((0, 4, 4), np.uint8), "train_labels": np.zeros(0, int)}, "arrays are empty"),
        (
            {"train_images": np.array([object()] * 2, dtype=object), "train_labels": np.zeros(2, int)},
            "cannot be read without unpickling",
        ),
    ],
)
def test_medmnist_bad_files_are_data_errors(tmp_path: Path, arrays: dict[str, Any], message: str) -> None:
    npz(tmp_path, **arrays)
    with pytest.raises(DataError, match=message):
        read("medmnist", tmp_path, path="m.npz")


def test_medmnist_not_an_npz_is_a_data_error(tmp_path: Path) -> None:
    (tmp_path / "m.npz").write_bytes(b"\x80\x04not a zip")
    with pytest.raises(DataError, match=r"m\.npz: not a readable \.npz file"):
        read("medmnist", tmp_path, path="m.npz")


# --- end to end through the builder ---------------------------------------------------------------------------


def build(tmp_path: Path, name: str, cfg: Any) -> tuple[Any, list[Any]]:
    from components.data.build import build_dataset, load_records

    report = build_dataset(
        {name: cfg}, tmp_path / "out", workspace=tmp_path, image_size=32, image_mode="L", resize="pad",
        split_ratios=(0.8, 0.1, 0.1), split_seed=0, on_error="fail", workers=1, deid_key=b"test-key", seed=0,
    )  # fmt: skip
    return report, load_records(tmp_path / "out")


def splits_per(records: list[Any], attr: str) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for r in records:
        out.setdefault(getattr(r, attr), set()).add(r.split)
    return out


@pytest.mark.shared_data
def test_vqa_rad_builds_over_314_images_with_zero_group_leakage(tmp_path: Path) -> None:
    cfg = SOURCES["vqa_rad"].config(path=str(shared("vqa_rad")))
    report, records = build(tmp_path, "vqa_rad", cfg)
    # all 2,248 QA rows become records: within a source, rows with their own qid stay even where the text
    # repeats (qids 78/79, 195/196, 422/447, 942/943: a "paraphrase" identical to its original)
    assert report.records == 2248 and report.duplicates_merged == 0
    assert len(records) == 2248 and report.quarantined == []
    assert len({r.image_sha256 for r in records}) == 314 == report.images == len({r.group for r in records})
    assert all(len(s) == 1 for s in splits_per(records, "group").values())  # zero group leakage
    assert all(len(s) == 1 for s in splits_per(records, "image_sha256").values())
    assert set(report.per_split) == {"train", "val", "test"}


@pytest.mark.shared_data
def test_breastmnist_builds_780_records_in_official_splits(tmp_path: Path) -> None:
    cfg = SOURCES["medmnist"].config(path=str(shared("breastmnist", "breastmnist.npz")))
    report, records = build(tmp_path, "breastmnist", cfg)
    assert len(records) == 778 and report.per_split == {"train": 545, "val": 78, "test": 155}
    assert all(r.split == r.meta["official_split"] for r in records)
    assert all(len(s) == 1 for s in splits_per(records, "group").values())
    assert all(len(s) == 1 for s in splits_per(records, "image_sha256").values())
    # the one image published in both train and test (with opposite labels) is reported and both records dropped
    assert report.images == 778 and report.official_split_conflicts == 1
    assert sorted(q["reason"].split(" is also in ")[1][:18] for q in report.quarantined) == [
        "the official test ",
        "the official train",
    ]
