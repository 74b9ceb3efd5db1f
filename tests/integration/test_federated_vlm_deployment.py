"""Sites own their data on the real VLM task, in deployment (issue 22, item 5), the way a user runs it: a workspace
whose ``medtune train`` made a tiny model; each hospital's own records file written by ``write_site_files`` into
that hospital's own folder (as on its own host); a SuperLink and two SuperNodes on loopback, each started with
``--node-config 'data=<its file> site=<its name>'`` (one ``--warm``, one Flower's default); then
``medtune federated --model-dir <the trained model> federated.mode=deployment`` submits the run. It ends in a
merged model folder that loads and differs from the trained one, each site reported by its own name, and nothing of
the sites' records written under the stage's work folder.

    .venv/bin/pytest tests/integration/test_federated_vlm_deployment.py
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from components.federated.tasks import SiteRef
from components.federated.vlm import plugin_base_layers, vlm_task, write_site_files
from tests.integration.conftest import assert_offline, medtune
from tests.integration.test_federated import CONNECTION, Cluster, cluster  # noqa: F401 (the fixture)

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # about 2 min on 2 busy cores

SMALL = ["--config", "configs/smoke.yaml"]
TINY_RUN = ["base.steps=3", "base.vision_warmup=2", "vq.steps=3", "train.stage1.steps=1", "train.stage2.steps=1",
            "train.stage3.steps=2", "train.checkpoint_every=1"]  # fmt: skip
# the phantom's synthetic sites (features.site) as two hospitals
HOSPITALS = {"hospital-a": "site-0", "hospital-b": "site-1"}


def test_vlm_sites_bring_their_own_records_to_a_deployment(
    make_workspace,
    cluster: Cluster,  # noqa: F811
    netguard: dict[str, str],
    tmp_path: Path,
) -> None:
    ws = make_workspace()
    env = cluster.env  # FLWR_HOME holds the connection to the test's SuperLink
    for args in (["data", "build", *SMALL], ["train", *SMALL, *TINY_RUN]):
        r = medtune(args, ws, env)
        assert r.returncode == 0, r.output
    (trained,) = (ws / ".medtune" / "train").glob("*/model")

    # each hospital writes its own records into its own folder (its host); the SuperNode names that file
    own: dict[str, Path] = {}
    for name, phantom_site in HOSPITALS.items():
        index = write_site_files(ws / "data" / "vlhealth", tmp_path / f"host-{name}", sites=[phantom_site])
        assert index["sites"][0]["name"] == phantom_site and index["sites"][0]["train"] > 0
        own[name] = tmp_path / f"host-{name}" / "site-0.jsonl"
    cluster.superlink()
    cluster.site_node("node0", own["hospital-a"], "hospital-a", warm=True)
    cluster.site_node("node1", own["hospital-b"], "hospital-b")  # Flower's default: a ClientApp process per message

    fed = medtune(
        ["federated", *SMALL, "--model-dir", str(trained.relative_to(ws)), *TINY_RUN,
         "federated.sites=[hospital-a,hospital-b]", "federated.mode=deployment", f"federated.connection={CONNECTION}",
         "federated.method=fedavg_lora", "federated.rounds_sparse=0", "federated.rounds_lora=1",
         "federated.local_steps=2", "federated.batch_size=4", "federated.round_timeout=90",
         "federated.node_wait_timeout=60"],
        ws, env, timeout=420,
    )  # fmt: skip
    where = f"{fed.output[-4000:]}\nsuperlink:\n{cluster.log('superlink')}\nnode0:\n{cluster.log('node0')}"
    assert fed.returncode == 0, where
    assert "each site brings its own records" in fed.stdout and "federated: finished 1 rounds" in fed.stdout, where
    assert "evaluate: closed/accuracy" in fed.stdout  # the merged model went on to evaluation

    # nothing of the sites' records written centrally: no sites folder, no site record in any file of the stage's
    (work,) = (ws / ".medtune" / "federated").iterdir()
    ids = {json.loads(line)["id"] for data in own.values() for line in data.read_text().splitlines()}
    assert not (work / "sites").exists() and ids
    for path in (p for p in work.rglob("*") if p.is_file() and p.suffix in (".jsonl", ".json")):
        assert not ids & set(re.findall(r'"id": "([^"]+)"', path.read_text())), path
    history = json.loads((work / "out" / "history.json").read_text())
    assert set(history["settings"]["task_args"]) == {"model_dir", "dataset"}  # the run config names no records
    assert history["settings"]["task_args"]["model_dir"] == str(trained.resolve())
    (record,) = history["rounds"]
    assert sorted(record["accepted"]) == sorted(HOSPITALS) and record["rejected"] == {}, record
    assert sorted(history["final"]) == sorted(HOSPITALS)
    for name, data in own.items():  # each trained on its own file's records (a fifth of its groups held out)
        task = vlm_task({"model_dir": str(trained), "dataset": "-"}, SiteRef(0, 1, str(data), name))
        assert record["sites"][name]["num_examples"] == task.num_examples() > 0
    # the warm SuperNode built its task once for the run's three messages (site name, training, final evaluation)
    log = (tmp_path / "node0.log").read_text(errors="replace")
    assert log.count("task vlm for hospital-a loaded") == 1 and log.count("task vlm for hospital-a re-used") == 2, log

    # the merged folder loads, and only the plugin-carrying base weights of the language model moved
    from components.training.plugins import load_trained

    merged = Path(fed.stdout.split("model: ")[-1].split()[0])
    fed_info = json.loads((merged / "trained.json").read_text())["federated"]  # what the model card shows
    assert merged == work / "model" and fed_info["rounds"] == 1 and fed_info["mode"] == "deployment"
    assert fed_info["secure_aggregation"] is False and fed_info["privacy"] is None
    after_model = load_trained(str(merged))
    before, after = load_trained(str(trained)).state_dict(), after_model.state_dict()
    assert set(before) == set(after)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == set(plugin_base_layers(after_model)), sorted(changed)
    assert_offline(netguard)
