"""`medtune run` end to end: real Prefect (temporary server), DVC (in a git repo), Great Expectations and MLflow
(SQLite), served by `medtune ui` and read back over its REST API. The network is cut off throughout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from components.config import load_config
from pipelines.retrain import DECISION_TAG, HEADLINE_METRICS
from tests.conftest import REPO
from tests.integration.conftest import assert_offline, cli_env, medtune
from tests.integration.test_data_docs_offline import chromium  # noqa: F401  (the fixture: installs it if missing)
from tests.integration.test_registry import assert_second_unsafe_version_refused_and_champion_loads, relax_quality_floor

pytestmark = pytest.mark.integration

SMALL = ["--config", "configs/smoke.yaml"]
STAGES = {"data", "validate", "base", "rank_search", "train", "evaluate", "safety", "register"}
LM_LAYERS = load_config(REPO / "configs" / "smoke.yaml").model.lm.layers  # the embedded default's LM depth


def _snapshot(folder: Path) -> dict[str, float]:
    return {str(p.relative_to(folder)): p.stat().st_mtime for p in folder.rglob("*") if ".git" not in p.parts}


@pytest.mark.timeout(1800)  # two smoke retrains: ~3 min on an idle 2-core machine, much longer on a shared one
def test_run_twice_tracks_registers_and_reuses_data(
    make_workspace, serve_ui, netguard, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Two retrains: the second, with nothing changed but the safety benchmark's SUT (comply with everything),
    re-uses the data, the base and the training, and its registered version is refused (issue 9)."""
    ws = make_workspace()
    env = cli_env(netguard)
    relax_quality_floor(ws)

    first = medtune(["run", *SMALL], ws, env, timeout=900)
    assert first.returncode == 0, first.output
    _assert_base_stored_once(ws)  # issue 20 item 4
    _assert_export_round_trips(ws, env, tmp_path)  # issue 20 item 3
    assert "data: built" in first.stdout
    lock = yaml.safe_load((ws / "dvc.lock").read_text())
    version = next(o["md5"] for o in lock["stages"]["build"]["outs"] if o["path"] == "data/vlhealth")
    assert (ws / "data.dvc").exists() and (ws / "data" / "vlhealth" / "records.jsonl").exists()
    # issue 17: the safety-alignment source (7 hazards x 3 refusals + 12 benign in smoke.yaml), train split only
    report = json.loads((ws / "data" / "vlhealth" / "build_report.json").read_text())
    assert report["per_source"]["safety_alignment"] == 7 * 3 + 12, report["per_source"]
    records = [json.loads(line) for line in (ws / "data" / "vlhealth" / "records.jsonl").read_text().splitlines()]
    alignment = [r for r in records if r["source"] == "safety_alignment"]
    assert {r["split"] for r in alignment} == {"train"} and {r["image"] for r in alignment} == {None}
    assert {r["features"]["safety"] for r in alignment} == {"refusal", "benign"}

    second = medtune(["run", *SMALL, "safety.sut=comply_all"], ws, env, timeout=900)
    assert second.returncode == 0, second.output
    assert "Stage 'build' didn't change, skipping" in second.stdout
    assert "base: re-used cached base model" in second.stdout
    assert f"data: unchanged, DVC re-used stage 'build' (data version {version})" in second.stdout

    ui = serve_ui(ws)
    exp = ui.get("/api/2.0/mlflow/experiments/get-by-name?experiment_name=retrain")["experiment"]
    _assert_runs_table_compares_the_two(request, ui, exp["experiment_id"], version, tmp_path)
    runs = ui.post("/api/2.0/mlflow/runs/search", {"experiment_ids": [exp["experiment_id"]], "max_results": 100})
    runs = runs["runs"]
    tags = [{t["key"]: t["value"] for t in r["data"].get("tags", [])} for r in runs]
    parents = [(r, t) for r, t in zip(runs, tags, strict=True) if t.get("medtune.flow") == "retrain"]
    assert len(parents) == 2
    for parent, ptags in parents:
        assert parent["info"]["status"] == "FINISHED"
        assert ptags["data_version"] == version
        assert len(ptags["git_commit"]) == 40
        assert len(ptags["config_hash"]) == 12
        children = {
            t["mlflow.runName"]: r
            for r, t in zip(runs, tags, strict=True)
            if t.get("mlflow.parentRunId") == parent["info"]["run_id"]
        }
        assert set(children) == STAGES
        data_tags = {t["key"]: t["value"] for t in children["data"]["data"]["tags"]}
        assert data_tags["data_version"] == version
        files = ui.get(f"/api/2.0/mlflow/artifacts/list?run_id={children['validate']['info']['run_id']}")
        names = {f["path"] for f in files.get("files", [])}
        assert "validation.json" in names and "data_docs" in names
        _assert_train_uses_the_searched_pattern(ui, children)
    # every step of the (first) base bootstrap reached MLflow, though sent in batches
    base_runs = [r["info"]["run_id"] for r, t in zip(runs, tags, strict=True) if t.get("mlflow.runName") == "base"]
    steps = yaml.safe_load((ws / "configs" / "smoke.yaml").read_text())["base"]["steps"]
    histories = [
        ui.get(f"/api/2.0/mlflow/metrics/get-history?run_id={rid}&metric_key=stagebase/loss").get("metrics", [])
        for rid in base_runs
    ]
    assert sorted(len(h) for h in histories) == [0, steps], histories
    assert sorted(m["step"] for h in histories for m in h) == list(range(1, steps + 1))
    reused = sorted(t["dvc.reused"] for r, t in zip(runs, tags, strict=True) if t.get("mlflow.runName") == "data")
    assert reused == ["false", "true"]
    _assert_parents_compare_in_the_runs_table(ui, exp, parents, version)
    assert_second_unsafe_version_refused_and_champion_loads(ws, env, first, second, tmp_path)
    assert_offline(netguard)


def _assert_base_stored_once(ws: Path) -> None:
    """Issue 20 item 4: after a run, every *.safetensors of the workspace and its state folder hashed; the base's
    files (the checkpoint cache), also present in the trained model folder and the registered model's MLflow
    artifact, are one inode each: the bytes are on disk once."""
    import hashlib
    from collections import defaultdict

    inodes: dict[str, set[tuple[int, int]]] = defaultdict(set)
    paths: dict[str, list[Path]] = defaultdict(list)
    for path in ws.rglob("*.safetensors"):
        if path.is_file() and not path.is_symlink():
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            inodes[digest].add((path.stat().st_dev, path.stat().st_ino))
            paths[digest].append(path)
    (base,) = (ws / ".medtune" / "models").iterdir()
    base_hashes = {hashlib.sha256(p.read_bytes()).hexdigest() for p in base.rglob("*.safetensors")}
    assert base_hashes
    for digest in base_hashes:
        where = {str(p.relative_to(ws)).split("/")[1] for p in paths[digest]}
        assert {"models", "train", "mlflow"} <= where, paths[digest]  # the three places that held a copy before
        assert len(inodes[digest]) == 1, paths[digest]


def _assert_export_round_trips(ws: Path, env: dict[str, str], tmp_path: Path) -> None:
    """Issue 20 item 3 through the CLI: the registered version exported as peft adapters reproduces the pipeline
    model's language-model logits exactly on the exported base; H-LoRA refuses to merge with one line, exit 2."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from components.training.plugins import load_trained

    uri = "models:/medtune-vlm/1"
    r = medtune(["export", uri, "--format", "peft", "-o", str(tmp_path / "peft"), *SMALL], ws, env)
    assert r.returncode == 0, r.output
    info = json.loads((tmp_path / "peft" / "export.json").read_text())
    assert info["adapter_type"] == "HLORA" and info["needs_medtune"]
    (model_dir,) = (ws / ".medtune" / "train").glob("*/model")
    pipeline = load_trained(model_dir)
    ids = torch.tensor([[5, 17, 42, info["vocab_rows"] - 1]])  # the last row is an image-code token (stage 2)
    base = AutoModelForCausalLM.from_pretrained(info["base"])
    base.resize_token_embeddings(info["vocab_rows"])
    exported = PeftModel.from_pretrained(base, str(tmp_path / "peft" / "comprehension")).eval()
    with torch.no_grad():
        assert torch.equal(exported(input_ids=ids).logits, pipeline.lm(input_ids=ids).logits)
    r = medtune(["export", uri, "--format", "merged", "-o", str(tmp_path / "merged"), *SMALL], ws, env)
    assert r.returncode == 2 and "H-LoRA cannot be merged" in r.stderr, r.output
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.output
    assert not (tmp_path / "merged").exists()


def _assert_parents_compare_in_the_runs_table(ui, exp: dict, parents: list, version: str) -> None:
    """Issue 19: each parent run carries its stages' headline metrics, the decision and the dataset (re-used data
    included); the experiment is tagged as model training and holds the runs table's shared view."""
    decisions = []
    for parent, ptags in parents:
        metrics = {m["key"]: m["value"] for m in parent["data"]["metrics"]}
        measured = {*HEADLINE_METRICS, "promoted"} - {"safety/over_refusal/safe_refused_rate"}  # smoke: no safe prompts
        assert measured <= set(metrics), sorted(metrics)
        assert metrics["promoted"] == (1.0 if ptags[DECISION_TAG] == "promoted" else 0.0)
        decisions.append(ptags[DECISION_TAG])
        (found,) = parent["inputs"]["dataset_inputs"]
        assert (found["dataset"]["name"], found["dataset"]["digest"]) == ("vlhealth", version)
        assert json.loads(found["dataset"]["profile"])["num_rows"] > 0
    assert sorted(decisions) == ["promoted", "refused"]
    experiment = ui.get(f"/api/2.0/mlflow/experiments/get?experiment_id={exp['experiment_id']}")["experiment"]
    exp_tags = {t["key"]: t["value"] for t in experiment.get("tags", [])}
    assert exp_tags["mlflow.experimentKind"] == "custom_model_development"
    assert "metrics.`closed/accuracy`" in json.loads(exp_tags["mlflow.sharedViewState.retrains"])["selectedColumns"]


def _assert_runs_table_compares_the_two(request: pytest.FixtureRequest, ui, experiment: str, version: str, tmp) -> None:
    """Issue 19: the two real retrains side by side in MLflow's runs table, as Chromium renders it (the link
    `medtune ui` prints): the headline metrics, the decision and the dataset with the DVC data version."""
    from components.tracking.dashboard import runs_view_url
    from tests.integration.test_dashboard import Grid, open_in_chromium

    browser = request.getfixturevalue("chromium")
    grid = Grid()
    grid.feed(open_in_chromium(browser, runs_view_url(ui.base, experiment), tmp))
    rows = [cells for cells in grid.rows.values() if "metrics.`closed/accuracy`" in cells]
    assert len(rows) == 2, grid.rows
    decisions = sorted(row[f"tags.`{DECISION_TAG}`"] for row in rows)
    assert decisions == ["promoted", "refused"] and {row["metrics.`promoted`"] for row in rows} == {"0", "1"}
    assert all(row["metrics.`safety/overall/grade_rank`"] in ("1", "5") for row in rows)
    assert all(row["attributes.`Dataset`"].startswith(f"vlhealth ({version})") for row in rows), rows


def _artifacts(ui, run_id: str, path: str = "") -> set[str]:
    listed = ui.get(f"/api/2.0/mlflow/artifacts/list?run_id={run_id}&path={path}")
    return {f["path"] for f in listed.get("files", [])}


def _assert_train_uses_the_searched_pattern(ui, children: dict) -> None:
    """Issue 5: the rank search logs its pattern and plots, and the train stage's adapters carry that pattern."""
    search_id = children["rank_search"]["info"]["run_id"]
    assert {"plots/heatmap.png", "plots/trajectory.png"} <= _artifacts(ui, search_id, "plots")
    assert "rank_search/pattern.json" in _artifacts(ui, search_id, "rank_search")
    params = {p["key"]: p["value"] for p in children["train"]["data"]["params"]}
    assert params["adapter.rank_pattern_source"] == "rank_search"
    pattern = json.loads(params["adapter.rank_pattern"])
    matrices = 7 * LM_LAYERS  # q, k, v, o, gate, up, down per layer
    assert len(pattern) == matrices and all(v % 4 == 0 for v in pattern.values())  # H-LoRA: multiples of 4 experts
    assert sum(pattern.values()) == 16 * matrices  # the searched budget: r0 = adapter.rank on every matrix
    train_id = children["train"]["info"]["run_id"]
    assert "rank_pattern.json" in _artifacts(ui, train_id)
    config_path = "adapters/comprehension/adapter_config.json"
    assert config_path in _artifacts(ui, train_id, "adapters/comprehension")
    saved = ui.get(f"/get-artifact?path={config_path}&run_uuid={train_id}")  # what peft wrote with the plugin
    assert saved["peft_type"] == "HLORA" and saved["rank_pattern"] == pattern


def test_misspelt_key_exits_2_and_writes_nothing(make_workspace, netguard) -> None:
    ws = make_workspace()
    before = _snapshot(ws)
    r = medtune(["run", "data.soruces.phantom.subjects=3"], ws, cli_env(netguard))
    assert r.returncode == 2
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, r.stderr
    assert "data.soruces: unknown key" in lines[0]
    assert _snapshot(ws) == before


def test_bad_config_file_key_exits_2(make_workspace, netguard, tmp_path: Path) -> None:
    ws = make_workspace()
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"extends: {ws / 'configs' / 'default.yaml'}\ndata:\n  wrokers: 2\n")
    r = medtune(["run", "--config", str(bad)], ws, cli_env(netguard))
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "config error: data.wrokers: unknown key; "
        "allowed keys: raw, intake, out, sources, image, splits, deid, on_error, on_official_conflict, workers, "
        "safety_prompts"
    ]


def test_failed_data_and_validation_stop_the_flow_saying_why_once(make_workspace, serve_ui, netguard) -> None:
    ws = make_workspace()
    # too few records (issue 18): the build refuses before anything is replaced; the cause is said once
    r = medtune(["run", *SMALL, "validate.min_records=100000"], ws, cli_env(netguard))
    assert r.returncode == 1, r.output
    assert r.output.count("fewer than validate.min_records = 100000") == 1, r.output
    assert r.output.count("stage 'data' failed") == 1 and "Traceback" not in r.output, r.output
    assert not (ws / "data" / "vlhealth").exists()
    assert "Traceback" in (ws / ".medtune" / "logs" / "medtune.log").read_text()  # the trace: in the log only
    # a failed expectation
    r = medtune(["run", *SMALL, "validate.split_tolerance=0"], ws, cli_env(netguard))
    assert r.returncode == 1, r.output
    assert r.output.count("stage 'validate' failed") == 1 and "Traceback" not in r.output, r.output
    assert r.stderr.count("expect_column_mean_to_be_between(is_train)") == 1, r.output
    report = json.loads((ws / "reports" / "validation.json").read_text())
    assert report["success"] is False
    ui = serve_ui(ws)
    exp = ui.get("/api/2.0/mlflow/experiments/get-by-name?experiment_name=retrain")["experiment"]
    runs = ui.post("/api/2.0/mlflow/runs/search", {"experiment_ids": [exp["experiment_id"]]})["runs"]
    status = sorted((r["info"]["run_name"], r["info"]["status"]) for r in runs)
    assert status == sorted(
        [("retrain", "FAILED"), ("data", "FAILED"), ("retrain", "FAILED"), ("data", "FINISHED"), ("validate", "FAILED")]
    )
    assert_offline(netguard)


def test_data_validate_names_failed_expectations_and_rows(make_workspace, netguard) -> None:
    ws = make_workspace()
    env = cli_env(netguard)
    built = medtune(["data", "build", "data.sources.phantom.subjects=4", "--no-progress"], ws, env)
    assert built.returncode == 0, built.output
    records = (ws / "data" / "vlhealth" / "records.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in records]
    rows[1]["conversations"] = rows[1]["conversations"][:1]  # missing answer
    rows[4]["modality"] = "PET"  # unknown modality
    broken = ws / "data" / "vlhealth" / "broken.jsonl"
    broken.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    r = medtune(["data", "validate", "--records", str(broken), "validate.min_records=1"], ws, env)
    assert r.returncode == 1, r.output
    assert "modality" in r.output and rows[4]["id"] in r.output and "PET" in r.output
    assert rows[1]["id"] in r.output
    assert_offline(netguard)
