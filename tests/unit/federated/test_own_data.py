"""Sites own their data (issue 22, item 5): a SuperNode's records and name come from its node config, the
deployment's run config carries nothing about them, and a site without records is told how to give them.

    .venv/bin/pytest tests/unit/federated/test_own_data.py
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from components.federated.app import site_of
from components.federated.tasks import SiteRef, make_task
from components.federated.vlm import vlm_task
from pipelines.context import PACKAGE_ROOT
from pipelines.federated import _app_dir, _task_args
from pipelines.stages import StageFailed


def test_a_supernode_names_its_own_records_and_itself() -> None:
    assert site_of({"data": "/srv/a.jsonl", "site": "hospital-a"}) == SiteRef(0, 1, "/srv/a.jsonl", "hospital-a")
    assert site_of({"partition-id": 2, "num-partitions": 3}) == SiteRef(2, 3)
    with pytest.raises(ValueError, match=r"lacks 'partition-id'.*data=.*site="):
        site_of({"site": "hospital-a"})


def _record(site: str, split: str, i: int) -> dict[str, object]:
    return {"id": f"{site}-{i}", "group": f"{site}-g{i}", "task": "comprehension", "split": split,
            "features": {"site": site}, "conversations": [{"value": "q"}, {"value": "yes"}]}  # fmt: skip


def test_the_vlm_site_reads_only_the_file_its_node_config_names(tmp_path: Path) -> None:
    own = tmp_path / "hospital-a.jsonl"
    rows = [_record("hosp-a", "train", i) for i in range(5)] + [_record("hosp-a", "val", 9)]
    own.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = {"model_dir": "/shared/model", "dataset": "/shared/images"}  # no sites_dir: nothing written centrally
    task = vlm_task(args, SiteRef(0, 1, str(own), "hospital-a"))
    assert task.site == "hospital-a" and task.num_examples() == 5 and len(task.val_records) == 1
    assert vlm_task(args, SiteRef(0, 1, str(own))).site == "hosp-a"  # unnamed: the records' own features.site
    with pytest.raises(ValueError, match=r"site 1: no records: start its SuperNode with --node-config 'data="):
        vlm_task(args, SiteRef(1, 2))
    with pytest.raises(FileNotFoundError, match="hospital-b: no records file at /nowhere.jsonl"):
        vlm_task(args, SiteRef(0, 1, "/nowhere.jsonl", "hospital-b"))


def test_deployment_run_config_names_no_site_records(tmp_path: Path) -> None:
    deployed = _task_args("deployment", "/m", "/d", tmp_path)
    assert deployed == {"model_dir": "/m", "dataset": "/d"}
    assert _task_args("simulation", "/m", "/d", tmp_path)["sites_dir"] == str(tmp_path / "sites")
    # a SuperNode does not run in the submitter's folder: `medtune federated --model-dir rel/model` sends it absolute
    assert _task_args("deployment", "rel/m", "d", tmp_path) == {"model_dir": str(Path("rel/m").resolve()),
                                                               "dataset": str(Path("d").resolve())}  # fmt: skip


def test_deployment_submits_medtune_s_own_flower_app_from_a_fresh_workspace(tmp_path: Path) -> None:
    ctx = SimpleNamespace(path=lambda p: tmp_path / p)  # `medtune init` copies no infra/flower
    assert _app_dir(ctx, "infra/flower") == PACKAGE_ROOT / "infra" / "flower"  # type: ignore[arg-type]
    (tmp_path / "infra" / "flower").mkdir(parents=True)
    (tmp_path / "infra" / "flower" / "pyproject.toml").write_text("")
    assert _app_dir(ctx, "infra/flower") == tmp_path / "infra" / "flower"  # type: ignore[arg-type]
    with pytest.raises(StageFailed, match=r"federated.app_dir: no Flower app \(pyproject.toml\) in .*/nowhere"):
        _app_dir(ctx, "nowhere")  # type: ignore[arg-type]


def test_the_mlp_site_trains_on_its_own_npz(tmp_path: Path) -> None:
    path = tmp_path / "a.npz"
    np.savez(path, x=np.zeros((30, 16), np.float32), y=np.arange(30) % 4)
    task = make_task("mlp", {"seed": 0}, SiteRef(0, 1, str(path), "hospital-a"))
    assert task.site == "hospital-a" and task.num_examples() == 24  # 20% held out
    np.savez(path, x=np.zeros((30, 8), np.float32), y=np.arange(30) % 4)
    with pytest.raises(ValueError, match=r"a.npz: need x of shape \(n, 16\)"):
        make_task("mlp", {"seed": 0}, SiteRef(0, 1, str(path), "hospital-a"))
