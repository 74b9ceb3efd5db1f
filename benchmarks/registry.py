"""Registry costs: logging the pyfunc model, registering, the promotion transaction, and loading ``@champion`` in a
fresh process (issue 9, items 1-2).

    .venv/bin/python benchmarks/registry.py                      # a tiny model built here (seconds)
    .venv/bin/python benchmarks/registry.py --model-dir .medtune/train/<hash>/model --image data/vlhealth/images/...

Everything runs against a fresh SQLite store in a temporary folder. Rows:
- ``log_model``: medtune's path (explicit pip requirements, input example validated by MLflow loading the model and
  predicting once), then the same without the input example, then with requirements inferred by MLflow;
- ``register + challenger alias``; the promotion transaction (Prefect; the first call starts Prefect's temporary
  server, the second does not);
- a fresh ``python`` process: import, ``load_model("models:/<name>@champion")``, predict one question and one
  generated image; then the same prediction in this process after loading once (per call).
Prints a markdown table (wall and this process's CPU seconds).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def tiny_model(root: Path) -> tuple[Path, Path]:
    """A base + two plugins + VQ folder at the embedded default's shapes (untrained: costs depend on shapes only)."""
    import numpy as np
    import torch
    from PIL import Image

    from components.models.tokenizer import train_tokenizer
    from components.models.vlm import VLMArgs, build_vlm
    from components.models.vq import VQConfig, train_vq
    from components.training.plugins import AdapterArgs, prepare_model, save_trained

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    image = root / "slice.png"
    pixels = (rng.random((64, 64)) * 255).astype(np.uint8)
    Image.fromarray(pixels, "L").save(image)
    texts = ["Is there a lesion? yes", "What modality is this? CT", "Describe this image. An axial CT slice."] * 20
    base = build_vlm(VLMArgs(), train_tokenizer(texts, vocab_size=300)).save(root / "base")
    vq_config = VQConfig(image_size=64, downsample=8, codebook_size=256, code_dim=32, hidden=32)
    vq, _ = train_vq(torch.from_numpy(pixels[None, None] / 255.0).float().repeat(8, 1, 1, 1), vq_config, steps=2)
    model = prepare_model(base, codebook_size=256, adapter=AdapterArgs(rank=16, generation_rank=32))
    folder = save_trained(model, root / "model", base_dir=base)
    vq.save(folder / "vq")
    return folder, image


def timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


FRESH = """
import json, sys, time
t0 = time.perf_counter()
import mlflow, pandas as pd
t1 = time.perf_counter()
model = mlflow.pyfunc.load_model("models:/bench-vlm@champion")
t2 = time.perf_counter()
out = model.predict(pd.DataFrame(json.loads(sys.stdin.read())), params={"max_new_tokens": 8})
t3 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "load": t2 - t1, "predict": t3 - t2}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, help="A trained model folder (save_trained + vq/).")
    parser.add_argument("--image", type=Path, help="A PNG for the input example and the predictions.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="medtune-bench-registry-") as tmp:
        root = Path(tmp)
        from components.runtime import StatePaths, configure_environment

        configure_environment(StatePaths(root / "state").make())  # as medtune does: telemetry off, Prefect home here
        import torch

        torch.set_num_threads(2)
        import mlflow
        from mlflow import MlflowClient

        from components.tracking import pyfunc_entry, pyfunc_model, registry
        from components.tracking.promotion import Decision
        from pipelines.promote import Record, apply_decision

        model_dir, image = (args.model_dir, args.image) if args.model_dir else tiny_model(root)
        uri = f"sqlite:///{root / 'mlflow.db'}"
        mlflow.set_tracking_uri(uri)
        client = MlflowClient(tracking_uri=uri)
        experiment = client.create_experiment("bench", artifact_location=(root / "artifacts").as_uri())
        rows: list[tuple[str, float, float]] = []

        def new_run() -> str:
            return str(client.create_run(experiment).info.run_id)

        run_id = new_run()
        model_uri, wall, cpu = timed(lambda: registry.log_model(run_id, model_dir, example_image=image))
        rows.append(("log_model: explicit pip requirements + input example (medtune)", wall, cpu))

        def log_plain(**extra: Any) -> Any:
            with mlflow.start_run(run_id=new_run()):
                return mlflow.pyfunc.log_model(
                    name="model",
                    python_model=str(Path(pyfunc_entry.__file__).resolve()),
                    artifacts={pyfunc_model.ARTIFACT: str(model_dir)},
                    code_paths=[str(REPO / "components")],
                    signature=pyfunc_model.signature(),
                    **extra,
                )

        _, wall, cpu = timed(lambda: log_plain(pip_requirements=registry.pip_requirements()))
        rows.append(("log_model: explicit pip requirements, no input example", wall, cpu))
        _, wall, cpu = timed(lambda: log_plain())
        rows.append(("log_model: requirements inferred by MLflow, no input example", wall, cpu))

        version, wall, cpu = timed(lambda: registry.register_version(client, "bench-vlm", model_uri, run_id, {}))
        rows.append(("register a version", wall, cpu))
        decision = Decision("promoted", (), version, None, version)
        record = Record(uri, "bench-vlm", version, run_id, run_id, "# card")
        for label in ("first: starts Prefect's temporary server", "second"):
            _, wall, cpu = timed(lambda: apply_decision(uri, decision, record, challenger=True))
            rows.append((f"promotion transaction ({label})", wall, cpu))

        frame = pyfunc_model.input_example(pyfunc_model.file_to_base64(image)).to_dict(orient="records")
        started = time.perf_counter()
        env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
        proc = subprocess.run([sys.executable, "-c", FRESH], input=json.dumps(frame), capture_output=True, text=True,
                              env=env, cwd=root, timeout=600, check=True)  # fmt: skip
        fresh_wall = time.perf_counter() - started
        parts = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append(("fresh process: whole (python start, imports, load, predict 2 rows)", fresh_wall, float("nan")))
        for key in ("import", "load", "predict"):
            rows.append((f"fresh process: {key}", parts[key], float("nan")))
        loaded = mlflow.pyfunc.load_model("models:/bench-vlm@champion")
        import pandas as pd

        loaded.predict(pd.DataFrame(frame), params={"max_new_tokens": 8})  # warm-up
        _, wall, cpu = timed(lambda: loaded.predict(pd.DataFrame(frame), params={"max_new_tokens": 8}))
        rows.append(("predict 2 rows, model already loaded", wall, cpu))

    load = os.getloadavg()[0]
    print(f"model folder: {'given' if args.model_dir else 'tiny, built here (embedded default shapes)'}; "
          f"load average {load:.1f}\n")  # fmt: skip
    print("| step | wall (s) | CPU of this process (s) |")
    print("|---|---:|---:|")
    for name, wall, cpu in rows:
        print(f"| {name} | {wall:.2f} | {'-' if cpu != cpu else f'{cpu:.2f}'} |")


if __name__ == "__main__":
    main()
