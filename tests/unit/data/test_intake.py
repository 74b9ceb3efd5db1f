"""The intake boundary (issue 18): identified files in, de-identified files out under pseudonymised names, and a
data plane that cannot lose a good dataset (too few records, wrong types, edited external sources, an image in
two official splits, a killed build)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest

from components.data.defined_terms import body_part_term, modality_term
from components.data.intake import MAP_FILE, ingest, raise_if_identified
from components.data.pseudonyms import PathPseudonyms, path_pseudonym
from components.data.sources.base import DataError, SourceContext, SourceSample
from components.data.sources.dicom import DicomSourceConfig
from components.data.sources.llava_json import LlavaJsonSourceConfig
from tests.unit.data.helpers import KEY, PHI_STRINGS, build, phi_ct, sample, tree_bytes, write_dicom

SOURCES = {"hospital": DicomSourceConfig(path="data/raw/hospital")}


def _ingest(ws: Path, **kw: object):  # type: ignore[no-untyped-def]
    args = {
        "workspace": ws,
        "raw": "data/raw",
        "intake": "data/intake",
        "key": KEY,
        "secrets": ws / ".medtune" / "secrets",
        "stamps": ws / ".medtune" / "intake",
    }
    args.update(kw)
    return ingest(SOURCES, **args)  # type: ignore[arg-type]


def _plant(ws: Path) -> Path:
    intake = ws / "data" / "intake" / "hospital"
    phi_ct(intake / "Doe_Jane" / "Doe_Jane_ct.dcm")
    phi_ct(intake / "DOE_JANE" / "second.dcm", SeriesDescription="follow-up of Jane Doe")
    (intake / "Doe_Jane" / "Doe_Jane_referral.txt").write_text("Referral: Jane Doe, MRN-998877")
    return intake


def test_path_pseudonyms_are_keyed_case_insensitive_and_mapped_back(tmp_path: Path) -> None:
    assert path_pseudonym(KEY, "Doe_Jane/Doe_Jane_ct.DCM") == path_pseudonym(KEY, "DOE_JANE/doe_jane_ct.dcm")
    shown = path_pseudonym(KEY, "Doe_Jane/Doe_Jane_ct.dcm")
    assert "doe" not in shown.lower() and shown.endswith(".dcm") and shown.count("/") == 1
    assert path_pseudonym(b"another-key-0123456789abcdef", "Doe_Jane") != path_pseudonym(KEY, "Doe_Jane")
    assert path_pseudonym(KEY, shown) == shown  # already a pseudonym: kept
    names = PathPseudonyms(KEY, tmp_path / "secrets" / MAP_FILE)
    assert names.path("Doe_Jane/x.dcm") == path_pseudonym(KEY, "Doe_Jane/x.dcm")
    names.save()
    assert (tmp_path / "secrets" / MAP_FILE).stat().st_mode & 0o777 == 0o600
    again = PathPseudonyms(KEY, tmp_path / "secrets" / MAP_FILE)
    assert again.original(path_pseudonym(KEY, "Doe_Jane/x.dcm")) == "Doe_Jane/x.dcm"


def test_free_text_maps_through_defined_terms() -> None:
    assert [body_part_term(v) for v in ("ABDOMEN", "Whole_Body", "CSPINE", "", "Fennimore", "Jane Doe")] == [
        "abdomen",
        "entire body",
        "cervical spine",
        "unknown",
        "other",
        "other",
    ]
    assert [modality_term(v) for v in ("MR", "us", "", "Fennimore")] == ["MR", "US", "unknown", "other"]


def test_ingest_deidentifies_names_paths_and_free_text(tmp_path: Path) -> None:
    intake = _plant(tmp_path)
    write_dicom(intake / "free.dcm", np.ones((8, 8), np.uint16) * 5, BodyPartExamined="Fennimore", PatientID="X1")
    report = _ingest(tmp_path)
    counts = report.sources["hospital"]
    assert counts == {"files": 4, "written": 3, "masked": 0, "checked": 0, "quarantined": 1}, counts
    [bad] = report.quarantined
    assert "not a DICOM file" in bad["reason"] and "referral" not in json.dumps(bad).lower()
    assert "doe" not in json.dumps(bad).lower() and bad["key"].startswith("data/intake/hospital/p-")
    raw = tmp_path / "data" / "raw" / "hospital"
    files = tree_bytes(raw)
    assert len(files) == 3 and all(name.startswith("pt-") and "/f-" in name for name in files)
    assert len({name.split("/")[0] for name in files}) == 2  # Doe_Jane and DOE_JANE: one patient
    for name, data in files.items():
        assert not [s for s in (*PHI_STRINGS, "Doe_Jane", "follow-up", "Fennimore") if s.encode() in data], name
        assert pydicom.dcmread(raw / name).PatientIdentityRemoved == "YES"
    # free text does not leave the intake (BodyPartExamined emptied: "unknown"), nor become a caption
    report_b = build({"hospital": SOURCES["hospital"]}, tmp_path / "ds", tmp_path)
    records = (tmp_path / "ds" / "records.jsonl").read_text()
    assert report_b.records == 9 and "Fennimore" not in records and '"body_part":"abdomen"' in records
    # the map back stays beside the key
    mapping = json.loads((tmp_path / ".medtune" / "secrets" / MAP_FILE).read_text())
    assert "Doe_Jane_referral.txt" in mapping.values()


def test_ingest_skips_when_unchanged_rebuilds_on_change_and_is_byte_identical(tmp_path: Path) -> None:
    intake = _plant(tmp_path)
    first = _ingest(tmp_path)
    raw = tmp_path / "data" / "raw" / "hospital"
    before = tree_bytes(raw)
    assert _ingest(tmp_path).skipped == ["hospital"] and tree_bytes(raw) == before
    assert _ingest(tmp_path, force=True).sources["hospital"] == first.sources["hospital"]
    assert tree_bytes(raw) == before  # same intake and key: the same bytes
    (intake / "DOE_JANE" / "second.dcm").unlink()
    assert _ingest(tmp_path).sources["hospital"]["written"] == 1 and len(tree_bytes(raw)) == 1


def test_ingest_failure_keeps_the_previous_raw_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _plant(tmp_path)
    _ingest(tmp_path)
    raw = tmp_path / "data" / "raw" / "hospital"
    before = tree_bytes(raw)
    import components.data.intake as intake_module

    def boom(*a: object, **k: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(intake_module, "swap_folder", boom)
    with pytest.raises(KeyboardInterrupt):
        _ingest(tmp_path, force=True)
    assert tree_bytes(raw) == before and not [p for p in raw.parent.iterdir() if p.name.startswith(".")]


def test_unclaimed_intake_folder_is_named_by_pseudonym(tmp_path: Path) -> None:
    phi_ct(tmp_path / "data" / "intake" / "Doe_Jane" / "a.dcm")
    report = _ingest(tmp_path)
    [item] = report.quarantined
    assert item["source"] == "(none)" and "Doe" not in json.dumps(item) and "no DICOM source" in item["reason"]


def test_identified_files_in_the_raw_tree_are_refused(tmp_path: Path) -> None:
    raw = tmp_path / "data" / "raw" / "hospital"
    phi_ct(raw / "Doe_Jane.dcm")
    with pytest.raises(DataError, match="not de-identified") as e:
        raise_if_identified(raw, "data/raw/hospital", KEY, "data/intake")
    assert "Doe" not in str(e.value) and "medtune data ingest" in str(e.value)


def test_reader_names_files_by_pseudonym_and_refuses_unchecked_burned_in_candidates(tmp_path: Path) -> None:
    folder = tmp_path / "direct"
    phi_ct(folder / "Doe_Jane" / "ok.dcm")
    write_dicom(folder / "Doe_Jane" / "us.dcm", np.ones((8, 8), np.uint8), modality="US")
    write_dicom(folder / "burned.dcm", np.ones((8, 8), np.uint16), BurnedInAnnotation="YES")
    (folder / "Doe_Jane_notes.txt").write_text("Jane Doe")
    report = build({"d": DicomSourceConfig(path="direct")}, tmp_path / "ds", tmp_path)
    text = json.dumps(report.to_json())
    assert "Doe" not in text and report.records == 3
    reasons = sorted(q["reason"].split(": ", 1)[1] for q in report.quarantined)
    assert sum("burned-in" in r and "intake" in r for r in reasons) == 2 and any("not a DICOM" in r for r in reasons)


# --- builds that cannot lose data ---------------------------------------------------------------------------


def test_too_few_records_fail_and_keep_the_previous_dataset(tmp_path: Path, list_source: Callable) -> None:
    def good(ctx: SourceContext) -> Iterator[SourceSample]:
        for i in range(4):
            yield sample(f"s{i}", np.full((8, 8), i * 40, np.uint8))

    def all_bad(ctx: SourceContext) -> Iterator[SourceSample]:
        for i in range(4):
            yield sample(f"s{i}", np.full((8, 8), i * 40, np.uint8), question="Seen on 03/04/2019?")

    out = tmp_path / "ds"
    build({"s": list_source("good", good)}, out, tmp_path, min_records=4)
    before = tree_bytes(out)
    with pytest.raises(DataError, match=r"produced 0 records, fewer than validate.min_records = 1") as e:
        build({"s": list_source("all_bad", all_bad)}, out, tmp_path)
    assert "4 quarantined: 4 x PHI pattern in question: date" in str(e.value)
    assert "previous dataset was kept" in str(e.value)
    with pytest.raises(DataError, match="produced 4 records, fewer than validate.min_records = 5"):
        build({"s": list_source("good", good)}, out, tmp_path, min_records=5)
    assert tree_bytes(out) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".ds")]


def test_wrong_typed_manifest_fields_are_quarantined_by_field(tmp_path: Path) -> None:
    rows = [
        {"id": "a", "conversations": [{"from": "human", "value": 42}, {"from": "gpt", "value": "yes"}]},
        {"id": "b", "conversations": [{"from": "human", "value": "Why?"}, {"from": "gpt", "value": {"x": 1}}]},
        {
            "id": "c",
            "modality": ["CT"],
            "conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}],
        },
        {"id": "d", "conversations": [{"from": "human", "value": "Is it fine?"}, {"from": "gpt", "value": "yes"}]},
    ]
    (tmp_path / "m.json").write_text(json.dumps(rows))
    report = build({"m": LlavaJsonSourceConfig(path="m.json", license="CC0-1.0")}, tmp_path / "ds", tmp_path)
    reasons = [q["reason"] for q in report.quarantined]
    assert report.records == 1 and len(reasons) == 3, reasons
    assert "turn 0: field 'value' is a number (42), not text" in reasons[0]
    assert "turn 1: field 'value' is an object" in reasons[1] and "field 'modality' is a list" in reasons[2]


def test_an_edited_source_outside_the_workspace_rebuilds(tmp_path: Path) -> None:
    ws, outside = tmp_path / "ws", tmp_path / "shared"
    ws.mkdir()
    outside.mkdir()
    rows = [{"id": "a", "conversations": [{"from": "human", "value": "Q?"}, {"from": "gpt", "value": "old"}]}]
    (outside / "m.json").write_text(json.dumps(rows))
    for path in ("../shared/m.json", str(outside / "m.json")):
        cfg = {"m": LlavaJsonSourceConfig(path=path, license="CC0-1.0")}
        build(cfg, ws / "ds", ws, force=False)
        assert build(cfg, ws / "ds", ws, force=False).skipped
        rows[0]["conversations"][1]["value"] = "new" if rows[0]["conversations"][1]["value"] == "old" else "old"
        (outside / "m.json").write_text(json.dumps(rows))
        again = build(cfg, ws / "ds", ws, force=False)
        assert not again.skipped and rows[0]["conversations"][1]["value"] in (ws / "ds" / "records.jsonl").read_text()


def test_an_image_in_two_official_splits_is_dropped_or_kept(tmp_path: Path, list_source: Callable) -> None:
    same = np.full((8, 8), 7, np.uint8)

    def split(ctx: SourceContext) -> Iterator[SourceSample]:
        yield sample("a", same, group="g-a", split="train", answer="yes")
        yield sample("b", same, group="g-b", split="test", answer="no")
        yield sample("c", np.zeros((8, 8), np.uint8), group="g-c", split="train")

    dropped = build({"s": list_source("split", split)}, tmp_path / "drop", tmp_path)
    assert dropped.records == 1 and dropped.official_split_conflicts == 1
    assert sorted(q["key"] for q in dropped.quarantined) == ["record s/a", "record s/b"]
    assert "also in the official test split" in dropped.quarantined[0]["reason"]
    kept = build({"s": list_source("split", split)}, tmp_path / "keep", tmp_path, on_official_conflict="keep")
    assert kept.records == 3 and kept.quarantined == []
    lines = [json.loads(line) for line in (tmp_path / "keep" / "records.jsonl").read_text().splitlines()]
    assert {r["meta"]["official_split"] for r in lines} == {"train", "test"}


KILLED_BUILD = """
import sys
from pathlib import Path
from components.data.build import build_dataset
from components.data.sources.phantom import PhantomSourceConfig

def tick(stage, done, total):
    if stage == "images" and done >= 50:
        print("IMAGES", flush=True)

build_dataset({"p": PhantomSourceConfig(subjects=400, seed=0)}, Path(sys.argv[1]), workspace=Path(sys.argv[1]).parent,
              image_size=64, image_mode="L", resize="pad", split_ratios=(0.8, 0.1, 0.1), split_seed=0,
              on_error="quarantine", workers=2, deid_key=b"k" * 32, seed=0, progress=tick, force=True)
"""


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_killed_build_leaves_no_worker_processes_and_the_previous_dataset(tmp_path: Path) -> None:
    from components.data.sources.phantom import PhantomSourceConfig

    build({"p": PhantomSourceConfig(subjects=4, seed=1)}, tmp_path / "ds", tmp_path)
    before = tree_bytes(tmp_path / "ds")
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(KILLED_BUILD), str(tmp_path / "ds")],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,  # its own process group: the workers are in it too
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 120
    try:
        line = ""
        while "IMAGES" not in line and time.monotonic() < deadline and proc.poll() is None:
            line = proc.stdout.readline()
        assert "IMAGES" in line, "the build never reached its image workers"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        end = time.monotonic() + 15
        while _group_alive(proc.pid) and time.monotonic() < end:
            time.sleep(0.2)
        assert not _group_alive(proc.pid), "image workers outlived the killed build"
    finally:
        if _group_alive(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
    assert tree_bytes(tmp_path / "ds") == before  # the killed build's half-written folder is a sibling
    build({"p": PhantomSourceConfig(subjects=4, seed=1)}, tmp_path / "ds", tmp_path)  # ... removed by the next
    assert tree_bytes(tmp_path / "ds") == before and [p.name for p in tmp_path.iterdir()] == ["ds"]


def test_external_sources_reach_dvc_through_the_build_params(tmp_path: Path) -> None:
    """DVC sees data/raw, not ../shared: the content hash of what sources name outside it goes into the build
    stage's params (params.yaml's _medtune.sources), so `dvc repro` re-runs the build after an edit there."""
    from components.data.build import external_inputs_hash

    ws, outside = tmp_path / "ws", tmp_path / "shared"
    (ws / "data" / "raw" / "hospital").mkdir(parents=True)
    outside.mkdir()
    (outside / "m.json").write_text("[]")
    sources = {
        "m": LlavaJsonSourceConfig(path="../shared/m.json", license="CC0-1.0"),
        "hospital": DicomSourceConfig(path="data/raw/hospital"),
    }
    first = external_inputs_hash(sources, ws, ws / "data" / "raw")
    (ws / "data" / "raw" / "hospital" / "new.dcm").write_bytes(b"x")  # tracked by DVC itself: not in the hash
    assert external_inputs_hash(sources, ws, ws / "data" / "raw") == first
    (outside / "m.json").write_text('[{"id": "a"}]')
    assert external_inputs_hash(sources, ws, ws / "data" / "raw") != first
