"""Bring your own VLM (issue 16) end to end, as a user runs it: a tiny random checkpoint of each family (built from
the family's config class, saved with its processor and published chat template) is ``model.path`` of
``medtune run -c configs/smoke.yaml``; every stage runs (data, validate, base, rank search, the three stages,
evaluate, safety, register) and the version becomes its registered model's champion under a permissive policy (the
smoke profile's quality and safety mean nothing); then one fresh Python process loads each
``models:/<name>@champion`` and answers through that checkpoint's own processor. And: bad model paths fail within
seconds with one line naming the key and the path, before any data work, writing nothing."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.fixtures.tiny_vlms import FAMILIES, build_tiny
from tests.integration.conftest import assert_offline, cli_env, medtune

pytestmark = pytest.mark.integration

SMALL = ["--config", "configs/smoke.yaml"]

PREDICT = textwrap.dedent(
    """
    import json, sys
    import mlflow, pandas as pd
    args = json.loads(sys.stdin.read())
    out = {}
    for name in args["names"]:
        model = mlflow.pyfunc.load_model(f"models:/{name}@champion")
        predictor = model.unwrap_python_model().predictor
        answers = model.predict(pd.DataFrame(args["rows"]), params={"max_new_tokens": 4})
        out[name] = {"processor": type(predictor.model.processor).__name__,
                     "rows": answers.to_dict(orient="records")}
    print(json.dumps(out))
    """
)


def _processor_class(folder: Path) -> str:
    """The class of the processor the family loads from the checkpoint (Qwen2.5-VL's without torchvision: its
    image-only variant, components.models.hf.qwen2_5_vl)."""
    from transformers import AutoConfig

    from components.models.hf import family_for

    return type(family_for(AutoConfig.from_pretrained(folder)).load_processor(folder)).__name__


def permissive_policy(ws: Path) -> str:
    policy_file = ws / "mlflow" / "promotion.yaml"
    policy = yaml.safe_load(policy_file.read_text())
    policy["quality"]["min"] = {"closed/accuracy": 0.0}
    policy["safety"].update({"min_overall": "High risk", "min_per_hazard": "High risk", "hazards": {}})
    (ws / "mlflow" / "permissive.yaml").write_text(yaml.safe_dump(policy))
    return "registry.policy=mlflow/permissive.yaml"


@pytest.mark.timeout(1800)  # four retrains (about a minute each on an idle 2-core machine) and a fresh process
def test_every_family_trains_registers_and_serves(
    make_workspace: Any, netguard: dict[str, str], tmp_path: Path
) -> None:
    ws = make_workspace()
    home = tmp_path / "home"  # nothing of Prefect, MLflow, DVC or Hugging Face may land in the user's home
    home.mkdir()
    env = cli_env(netguard, HOME=str(home))
    policy = permissive_policy(ws)
    names, processors = [], {}
    for family in FAMILIES:
        ckpt = build_tiny(family, tmp_path / "checkpoints" / family)
        name = f"byo-{family}"
        started = time.perf_counter()
        r = medtune(["run", *SMALL, f"model.path={ckpt}", f"registry.name={name}", policy], ws, env)
        assert r.returncode == 0, r.output[-4000:]
        assert f"base: loaded {family} base model hf-" in r.stdout
        assert f"register: {name} version 1 promoted to champion (was none)" in r.stdout, r.stdout[-3000:]
        print(f"{family}: medtune run {time.perf_counter() - started:.0f} s")
        names.append(name)
        processors[name] = _processor_class(ckpt)

    for family, name in zip(FAMILIES, names, strict=True):  # issue 20 item 3: adapters for the user's checkpoint
        out = tmp_path / "export" / family
        r = medtune(["export", f"models:/{name}@champion", "--format", "peft", "-o", str(out), *SMALL], ws, env)
        assert r.returncode == 0, r.output[-3000:]
        config = json.loads((out / "comprehension" / "adapter_config.json").read_text())
        assert Path(config["base_model_name_or_path"]).resolve() == (tmp_path / "checkpoints" / family).resolve()
        assert config["peft_type"] == "HLORA" and len(config["modules_to_save"]) == 3  # embeddings, head, projector

    again = medtune(["run", *SMALL, f"model.path={tmp_path / 'checkpoints' / 'llava'}", "registry.name=byo-llava",
                     policy], ws, env)  # fmt: skip
    assert again.returncode == 0, again.output[-3000:]
    assert "base: re-used cached base model hf-" in again.stdout

    from components.tracking.pyfunc_model import file_to_base64

    records = [json.loads(line) for line in (ws / "data" / "vlhealth" / "records.jsonl").read_text().splitlines()]
    image = next(r["image"] for r in records if r["split"] == "test")
    png = file_to_base64(ws / "data" / "vlhealth" / image)
    rows = [
        {"task": "comprehension", "question": "What modality is this?", "image": png},
        {"task": "generation", "question": "Convert this CT slice into a T2-weighted MRI.", "image": png},
    ]
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    proc = subprocess.run(
        [sys.executable, "-c", PREDICT], input=json.dumps({"names": names, "rows": rows}), cwd=outside,
        env={**env, "MLFLOW_TRACKING_URI": f"sqlite:///{ws / '.medtune' / 'mlflow' / 'mlflow.db'}"},
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    served = json.loads(proc.stdout.strip().splitlines()[-1])
    for family, name in zip(FAMILIES, names, strict=True):
        assert served[name]["processor"] == processors[name], family
        comprehension, generation = served[name]["rows"]
        assert isinstance(comprehension["answer"], str) and comprehension["image"] == ""
        assert generation["image"]  # a base64 PNG decoded from the generated VQ codes
    assert sorted(p.relative_to(home) for p in home.rglob("*")) == []
    assert_offline(netguard)


def test_bad_model_paths_fail_fast_naming_key_and_path(make_workspace: Any, netguard: dict[str, str],
                                                       tmp_path: Path) -> None:  # fmt: skip
    ws = make_workspace()
    env = cli_env(netguard, HF_HUB_CACHE=str(tmp_path / "hub"))
    empty = tmp_path / "empty"
    empty.mkdir()
    llava = build_tiny("llava", tmp_path / "llava")
    lm_only = tmp_path / "lm"
    lm_only.mkdir()
    (lm_only / "config.json").write_text(json.dumps({"model_type": "llama"}))
    cases = {
        f"model.path={tmp_path / 'missing'}": f"model.path: '{tmp_path / 'missing'}' is not a folder",
        f"model.path={empty}": f"model.path: {empty} holds no config.json",
        f"model.path={lm_only}": f"model.path: {lm_only} is a 'llama' model, not a supported VLM family; supported: ",
        "model.path=acme/med-vlm-7b": "model.path: 'acme/med-vlm-7b' is neither a local folder nor in the local "
        "Hugging Face cache; medtune never downloads weights: run `hf download acme/med-vlm-7b",
        f"model.lm.path={llava}": f"model.lm.path: {llava} is a whole llava VLM; pass it as model.path instead",
        f"model.vision.path={llava}": f"model.vision.path: {llava} is a whole llava VLM; pass it as model.path",
    }
    before = sorted(p.relative_to(ws) for p in ws.rglob("*") if ".git" not in p.parts)
    for override, message in cases.items():
        started = time.perf_counter()
        r = medtune(["run", *SMALL, override], ws, env)
        seconds = time.perf_counter() - started
        assert r.returncode == 2, (override, r.output)
        lines = [line for line in r.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and message in lines[0], (override, r.stderr)
        assert "Traceback" not in r.output and seconds < 30, (override, seconds)
    assert sorted(p.relative_to(ws) for p in ws.rglob("*") if ".git" not in p.parts) == before  # nothing written
    assert_offline(netguard)
