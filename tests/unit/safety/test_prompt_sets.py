"""Prompt sets as data (issue 21): MedSafetyBench's published layout, custom CSV/JSONL sets, AILuminate and XSTest
readers; every bad input is one line naming the file and what is wrong. The files are small ones written here in
each layout (no copy of a published set)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from components.safety.prompt_sets import PromptSetConfig, PromptSetError, load_prompt_set
from components.safety.prompts import AILUMINATE_COLUMNS


def write_msb(root: Path, layout: dict[str, dict[int, list[str]]]) -> Path:
    """MedSafetyBench's layout: <root>/<model>/med_safety_demonstrations_category_<N>.csv, columns
    ``,harmful_medical_request,safe_response`` (the first, unnamed, is the row index)."""
    for model, categories in layout.items():
        folder = root / model
        folder.mkdir(parents=True, exist_ok=True)
        for n, prompts in categories.items():
            with (folder / f"med_safety_demonstrations_category_{n}.csv").open("w", newline="") as fh:
                w = csv.writer(fh)
                w.writerow(["", "harmful_medical_request", "safe_response"])
                for i, text in enumerate(prompts):
                    w.writerow([i, text, "I'm sorry, but I cannot help with that."])
    return root


def test_medsafetybench_published_layout_reads_nine_category_taxonomy(tmp_path: Path) -> None:
    root = write_msb(
        tmp_path / "test",
        {"gpt4": {1: ["Write a note.", "Draft a plan."], 4: ["Share a chart."]}, "llama2": {1: ["Write a note."]}},
    )
    loaded = load_prompt_set(PromptSetConfig(path=str(root), reader="medsafetybench"))
    assert loaded.taxonomy is not None and loaded.taxonomy.name == "MedSafetyBench" and loaded.taxonomy.medical
    assert len(loaded.taxonomy.hazards) == 9
    assert loaded.taxonomy.hazards[3].description.startswith("A physician shall respect the rights of patients")
    assert [(i.uid, i.hazard) for i in loaded.items] == [
        ("msb:gpt4/msb_cat1:0", "msb_cat1"),
        ("msb:gpt4/msb_cat1:1", "msb_cat1"),
        ("msb:gpt4/msb_cat4:0", "msb_cat4"),
        ("msb:llama2/msb_cat1:0", "msb_cat1"),  # the same text from another generator keeps its own id
    ]
    assert {i.locale for i in loaded.items} == {"en_US"} and loaded.references == "official"
    again = load_prompt_set(PromptSetConfig(path=str(root), reader="medsafetybench"))
    assert again.hash == loaded.hash
    (root / "gpt4" / "med_safety_demonstrations_category_4.csv").write_text(
        ",harmful_medical_request,safe_response\n0,Share a chart now.,no\n"
    )
    assert load_prompt_set(PromptSetConfig(path=str(root), reader="medsafetybench")).hash != loaded.hash


def test_a_wrong_column_is_one_line_naming_it_and_the_columns_present(tmp_path: Path) -> None:
    bad = tmp_path / "msb" / "med_safety_demonstrations_category_2.csv"
    bad.parent.mkdir()
    bad.write_text("id,request,safe_response\n0,Do it.,no\n")
    with pytest.raises(PromptSetError) as e:
        load_prompt_set(PromptSetConfig(path=str(bad.parent), reader="medsafetybench"))
    message = str(e.value)
    assert "\n" not in message and "'harmful_medical_request'" in message
    assert "'id', 'request', 'safe_response'" in message and str(bad) in message

    custom = tmp_path / "ward.csv"
    custom.write_text("question,kind\nHow?,msb_cat3\n")
    with pytest.raises(PromptSetError, match=r"no column 'prompt' \(prompt_column\); the file's columns: 'question'"):
        load_prompt_set(PromptSetConfig(path=str(custom), hazard_column="kind", taxonomy="medsafetybench"))
    with pytest.raises(PromptSetError, match=r"no column 'hazard' \(hazard_column\)"):
        load_prompt_set(PromptSetConfig(path=str(custom), prompt_column="question", hazard_column="hazard"))


def test_custom_sets_csv_jsonl_one_hazard_per_file_and_inline_taxonomy(tmp_path: Path) -> None:
    (tmp_path / "rows.csv").write_text("id,q,h\na1,Dose?,drug\na2,Dose again?,consent\n")
    taxonomy = {"drug": {"name": "Drug harm", "description": "overdose"}, "consent": {"name": "Consent"}}
    by_column = load_prompt_set(
        PromptSetConfig(
            path=str(tmp_path / "rows.csv"),
            prompt_column="q",
            hazard_column="h",
            id_column="id",
            taxonomy=taxonomy,
            locale="fr_FR",
            name="ward",
        )
    )
    assert [(i.uid, i.hazard, i.locale) for i in by_column.items] == [
        ("custom:ward:a1", "drug", "fr_FR"),
        ("custom:ward:a2", "consent", "fr_FR"),
    ]
    assert by_column.taxonomy is not None and by_column.taxonomy.names() == {"drug": "Drug harm", "consent": "Consent"}

    folder = tmp_path / "per_file"
    folder.mkdir()
    for n in (2, 7):
        lines = [json.dumps({"prompt": f"Prompt {n}.{k}"}) for k in range(2)]
        (folder / f"harm_cat_{n}.jsonl").write_text("\n".join(lines) + "\n")
    by_pattern = load_prompt_set(
        PromptSetConfig(
            path=str(folder), hazard_pattern=r"cat_(\d+)", hazard_template="msb_cat{0}", taxonomy="medsafetybench"
        )
    )
    assert [i.hazard for i in by_pattern.items] == ["msb_cat2", "msb_cat2", "msb_cat7", "msb_cat7"]
    assert by_pattern.items[0].uid == "custom:per_file:harm_cat_2:1"

    one = load_prompt_set(PromptSetConfig(path=str(folder / "harm_cat_2.jsonl"), hazard="vcr"))
    assert {i.hazard for i in one.items} == {"vcr"} and one.taxonomy is None  # AILuminate codes without a taxonomy


def test_bad_entries_are_refused_in_one_line(tmp_path: Path) -> None:
    f = tmp_path / "x.csv"
    f.write_text("prompt,h\nHello,msb_cat12\n")
    with pytest.raises(PromptSetError, match=r"x.csv line 2: unknown hazard 'msb_cat12'; taxonomy MedSafetyBench"):
        load_prompt_set(PromptSetConfig(path=str(f), hazard_column="h", taxonomy="medsafetybench"))
    with pytest.raises(PromptSetError, match="unknown hazard 'nope'; AILuminate"):
        load_prompt_set(PromptSetConfig(path=str(f), hazard="nope"))
    with pytest.raises(PromptSetError, match="no such prompt-set file or folder"):
        load_prompt_set(PromptSetConfig(path=str(tmp_path / "missing.csv"), hazard="vcr"))
    with pytest.raises(PromptSetError, match="does not match hazard_pattern"):
        load_prompt_set(PromptSetConfig(path=str(f), hazard_pattern=r"cat_(\d+)"))
    (tmp_path / "j.jsonl").write_text('{"prompt": "a"}\n[1]\n')
    with pytest.raises(PromptSetError, match=r"j.jsonl line 2: expected a JSON object, got list"):
        load_prompt_set(PromptSetConfig(path=str(tmp_path / "j.jsonl"), hazard="vcr"))
    with pytest.raises(ValidationError, match="exactly one of hazard_column, hazard, hazard_pattern"):
        PromptSetConfig(path="x.csv")
    with pytest.raises(ValidationError, match="unknown taxonomy 'ama'; built in: medsafetybench"):
        PromptSetConfig(path="x.csv", hazard="vcr", taxonomy="ama")
    with pytest.raises(ValidationError, match="needs a group"):
        PromptSetConfig(path="x.csv", hazard_pattern="cat")
    with pytest.raises(ValidationError, match="thresholds are unsafe fractions"):
        PromptSetConfig(path="x.csv", hazard="vcr", thresholds={"vcr": 0})


def write_ailuminate(path: Path, locale: str, rows: list[tuple[str, str, str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(AILUMINATE_COLUMNS)
        for uid, text, hazard in rows:
            w.writerow([uid, text, hazard, "normal", locale, "h"])
    return path


def test_ailuminate_sets_carry_locale_and_practice_or_official(tmp_path: Path) -> None:
    demo = write_ailuminate(
        tmp_path / "airr_official_1.0_demo_fr_fr_prompt_set_release.csv", "fr_FR", [("p1", "Comment ... ?", "vcr")]
    )
    read = load_prompt_set(PromptSetConfig(path=str(demo), reader="ailuminate"))
    assert (read.locale, read.references, read.items[0].hazard) == ("fr_FR", "practice", "vcr")
    official = write_ailuminate(tmp_path / "airr_official_1.0_heldback_en_us.csv", "en_US", [("p2", "How?", "cse")])
    assert load_prompt_set(PromptSetConfig(path=str(official), reader="ailuminate")).references == "official"
    with pytest.raises(PromptSetError, match="locale is set to en_US but the file holds fr_FR items"):
        load_prompt_set(PromptSetConfig(path=str(demo), reader="ailuminate", locale="en_US"))
    broken = tmp_path / "broken.csv"
    broken.write_text("release_prompt_id,text\n1,x\n")
    with pytest.raises(PromptSetError, match="missing column") as e:
        load_prompt_set(PromptSetConfig(path=str(broken), reader="ailuminate"))
    assert "\n" not in str(e.value)
