"""Seconds per round of a Flower deployment on loopback, Flower's default SuperNode (a fresh ClientApp process per
message, which reloads the site's task and the base model every time) against medtune's warm SuperNode
(``medtune-supernode --warm``: one ClientApp process for all messages; issue 22, item 5).

    .venv/bin/python benchmarks/federated_rounds.py                    # minilm, 2 sites, 3 rounds, cold then warm
    .venv/bin/python benchmarks/federated_rounds.py --task mlp --rounds 2
    .venv/bin/python benchmarks/federated_rounds.py --task vlm --model-dir WS/.medtune/train/<key>/model

Each mode starts its own SuperLink and SuperNodes (``python -m components.federated.launch``, insecure, 127.0.0.1),
submits ``infra/flower`` with ``flwr run`` and reads the ServerApp's ``history.json``: *s/round* is the ServerApp's
time from sending a round's messages to aggregating the replies, which includes each site's ClientApp start and,
cold, its task and model load. The minilm task is the pretrained all-MiniLM-L6-v2 on VQA-RAD question types
(:mod:`components.federated.text`), FedAvg-LoRA rank 8, 3 local steps of batch 16 per round.

The vlm task is the trained medtune VLM (:mod:`components.federated.vlm`) as the ``federated`` stage runs it in
deployment: each SuperNode gets its own site's records file (``write_site_files`` into a folder of its own, as on
the site's host) and its name with ``--node-config 'data=... site=...'``; the run config names only the model and
the dataset's images. ``--model-dir`` is a trained model folder: a workspace's ``.medtune/train/<key>/model`` after
``medtune run`` or ``medtune train`` (the path their ``model:`` line prints; the default profile gives the
default-sized model), whose ``trained.json`` names the dataset it was trained on (``--dataset`` overrides it). The
sites are the dataset's first ``--sites`` site names (``features.site``: the phantom's site-0, site-1 ...);
FedAvg-LoRA rank 8, ``--local-steps`` of batch 8 (configs/federated.yaml's) per round. A warm SuperNode loads the
model in its first round (the vlm task loads it at its first training message), a cold one in every round.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, NoReturn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from components.federated.settings import FedSettings  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "vqa_rad" / "VQA_RAD Dataset Public.json"
BIN = Path(sys.executable).parent


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _bad(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def vlm_inputs(ns: argparse.Namespace) -> tuple[Path, Path]:
    """The trained model folder and the dataset folder of ``--task vlm``, checked (one line on bad input)."""
    if ns.model_dir is None:
        _bad("--task vlm needs --model-dir: a trained model folder (WS/.medtune/train/<key>/model after `medtune run` "
             "or `medtune train` in a workspace WS)")  # fmt: skip
    model = ns.model_dir.resolve()
    if not (model / "trained.json").is_file():
        _bad(f"--model-dir {ns.model_dir}: no trained.json (not a `medtune train` model folder)")
    dataset = ns.dataset or Path(json.loads((model / "trained.json").read_text()).get("dataset") or "")
    if not dataset.name or not (dataset / "records.jsonl").is_file():
        _bad(f"dataset {dataset}: no records.jsonl (name the built dataset folder with --dataset)")
    return model, dataset.resolve()


def vlm_sites(dataset: Path, count: int) -> list[str]:
    """The dataset's ``count`` largest sites (most train and val comprehension records; ``features.site``)."""
    from collections import Counter

    from components.training.data import read_records

    sizes = Counter(str((r.get("features") or {}).get("site")) for r in read_records(dataset)
                    if r.get("task") == "comprehension" and r.get("split") in ("train", "val")
                    and (r.get("features") or {}).get("site"))  # fmt: skip
    if len(sizes) < count:
        _bad(f"--sites {count}: the dataset {dataset} has {len(sizes)} sites ({', '.join(sorted(sizes))})")
    return sorted(sizes, key=lambda name: (-sizes[name], name))[:count]


def site_files(dataset: Path, count: int, root: Path) -> list[tuple[str, Path]]:
    """Each of the sites' records in a folder of its own, as on its host: (site name, records file)."""
    from components.federated.vlm import write_site_files

    files = []
    for name in vlm_sites(dataset, count):
        write_site_files(dataset, root / f"host-{name}", sites=[name])
        files.append((name, root / f"host-{name}" / "site-0.jsonl"))
    return files


def run_mode(warm: bool, ns: argparse.Namespace, root: Path) -> dict[str, Any]:
    env = {**os.environ, "FLWR_HOME": str(root / "flwr"), "FLWR_TELEMETRY_ENABLED": "0",
           "FLWR_DISABLE_UPDATE_CHECK": "1", "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
           "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(ns.threads)}  # fmt: skip
    port = _port()
    Path(env["FLWR_HOME"]).mkdir(parents=True)
    (Path(env["FLWR_HOME"]) / "config.toml").write_text(
        f'[superlink]\ndefault = "bench"\n\n[superlink.bench]\naddress = "127.0.0.1:{port}"\ninsecure = true\n'
    )
    launch = [sys.executable, "-m", "components.federated.launch"]
    procs: list[subprocess.Popen[bytes]] = []

    def start(name: str, args: list[str]) -> None:
        with open(root / f"{name}.log", "wb") as log:
            procs.append(subprocess.Popen(args, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                          start_new_session=True))  # fmt: skip

    try:
        start("superlink", [*launch, "superlink", "--insecure", "--port", str(port),
                            "--disable-runtime-dependency-installation"])  # fmt: skip
        deadline = time.monotonic() + 60
        while not _listening(port):
            if time.monotonic() > deadline:
                raise SystemExit("the SuperLink did not listen within 60 s")
            time.sleep(0.3)
        if ns.task == "vlm":  # each site's own records, named at node start; the run config names none
            model, dataset = vlm_inputs(ns)
            task_args: dict[str, Any] = {"model_dir": str(model), "dataset": str(dataset)}
            nodes = [f'data="{data}" site="{name}"' for name, data in site_files(dataset, ns.sites, root)]
        else:
            task_args = {"data": str(DATA), "alpha": 1.0} if ns.task == "minilm" else {}
            nodes = [f"partition-id={i} num-partitions={ns.sites}" for i in range(ns.sites)]
        for i, node_config in enumerate(nodes):
            start(f"node{i}", [*launch, "supernode", *(["--warm"] if warm else []), "--insecure", "--superlink",
                               f"127.0.0.1:{port}", "--port", str(_port()), "--node-config", node_config,
                               "--max-wait-time", "60"])  # fmt: skip
        out = root / "out"
        lr, batch = (1e-3, 8) if ns.task == "vlm" else (2e-3, 16)
        settings = FedSettings(method="fedavg_lora", rounds_sparse=0, rounds_lora=ns.rounds, rank=8,
                               local_steps=ns.local_steps, lr=lr, batch_size=batch, min_sites=ns.sites,
                               round_timeout=600.0, node_wait_timeout=120.0, task=ns.task, task_args=task_args,
                               out_dir=str(out))  # fmt: skip
        args = [str(BIN / "flwr"), "run", str(ROOT / "infra" / "flower"), "bench", "--stream"]
        for item in settings.to_flwr_args():
            args += ["-c", item]
        started = time.perf_counter()
        proc = subprocess.run(args, env=env, cwd=ROOT, capture_output=True, text=True, timeout=3600)
        wall = time.perf_counter() - started
        history_path = out / "history.json"
        if not history_path.is_file():
            raise SystemExit(
                f"flwr run wrote no history ({proc.returncode}): {proc.stdout[-2000:]}{proc.stderr[-2000:]}"
            )
        history = json.loads(history_path.read_text())
        if history["status"] != "finished":
            raise SystemExit(f"the run failed: {history['error']}")
        return {"mode": "warm" if warm else "cold", "seconds_per_round": [r["seconds"] for r in history["rounds"]],
                "wall": wall, "val_accuracy": history["rounds"][-1]["summary"].get("val_accuracy")}  # fmt: skip
    finally:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):  # the processes this script started, by group
                os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=30)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", default="minilm", choices=["minilm", "mlp", "vlm"])
    p.add_argument("--model-dir", type=Path, help="vlm: a trained model folder (WS/.medtune/train/<key>/model)")
    p.add_argument("--dataset", type=Path, help="vlm: the built dataset (default: the one trained.json names)")
    p.add_argument("--sites", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--local-steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch threads per ClientApp (OMP_NUM_THREADS)")
    p.add_argument("--modes", nargs="+", default=["cold", "warm"], choices=["cold", "warm"])
    p.add_argument("--json", type=Path)
    ns = p.parse_args()
    if ns.task == "minilm" and not DATA.is_file():
        raise SystemExit(f"needs {DATA} (the project's ../shared/data)")
    if ns.task == "vlm":
        model, dataset = vlm_inputs(ns)
        print(f"model {model}; images and the site files of {', '.join(vlm_sites(dataset, ns.sites))} from {dataset}")
    print(f"{ns.task}, {ns.sites} SuperNodes on loopback, FedAvg-LoRA {ns.rounds} rounds x {ns.local_steps} local "
          f"steps, {ns.threads} thread(s) per ClientApp\n")  # fmt: skip
    import machine  # a sibling module: this machine's per-core speed beside the times

    speed = machine.snapshot()
    results = []
    for mode in ns.modes:
        with tempfile.TemporaryDirectory() as tmp:
            res = run_mode(mode == "warm", ns, Path(tmp))
        results.append(res)
        print(f"  {mode}: {' / '.join(f'{s:.1f}' for s in res['seconds_per_round'])} s per round, {res['wall']:.0f} s")
    print("\n| SuperNode | s/round (each) | s/round (mean) | flwr run wall s |\n|---|---|---|---|")
    for r in results:
        each = r["seconds_per_round"]
        print(
            f"| {r['mode']} | {' / '.join(f'{s:.1f}' for s in each)} | {sum(each) / len(each):.1f} | {r['wall']:.0f} |"
        )
    machine.close(speed)
    if ns.json:
        ns.json.write_text(json.dumps({"machine": speed, "runs": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
