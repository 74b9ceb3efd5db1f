"""The ``federated`` stage of retrain (and ``medtune federated``): SLoRA across the configured sites on Flower,
starting from the trained model, ending in a model folder that evaluation, safety and registration load like any
trained one (DESIGN.md step 6; issue 7).

    medtune run -c configs/federated.yaml               # retrain with the stage between train and evaluate
    medtune federated -c configs/federated.yaml         # base -> train -> federated -> evaluate
    medtune federated federated.mode=deployment         # on a running SuperLink (infra/flower/README.md)

MLflow: the stage's child run ``federated`` holds the settings, one step per round of the weighted means (val
loss/accuracy of the global model, train loss, bytes up/down, sites averaged/rejected), the history and the plot;
under it one run per site holds that site's metrics per round and its final score. The work folder is keyed by
the federated settings, the seed, the data version and the trained model, so an unchanged re-run re-uses it.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any

from components.config import config_dict
from pipelines.context import Context
from pipelines.stages import Echo, StageFailed, connect, quiet


def enabled(ctx: Context) -> bool:
    """Whether the config names sites (the stage joins retrain only then)."""
    return ctx.config.federated.enabled


def _work_dir(ctx: Context, model_dir: str, data_version: str) -> Path:
    blob = json.dumps(
        {"federated": config_dict(ctx.config)["federated"], "seed": ctx.config.seed, "data": data_version,
         "model": str(Path(model_dir).resolve())},
        sort_keys=True,
    )  # fmt: skip
    return ctx.state.root / "federated" / hashlib.sha256(blob.encode()).hexdigest()[:12]


def federated_stage(
    ctx: Context, parent: str, echo: Echo = quiet, *, model_dir: str, data_version: str = ""
) -> dict[str, Any]:
    """SLoRA (or a baseline) over the sites of ``federated.sites`` from ``model_dir``; returns the new model folder
    in ``train_stage``'s shape (``model_dir``, ``run_id``, ``work_dir``)."""
    from components.federated.results import DELTAS, HISTORY, PLOT, read_deltas, read_history
    from components.federated.runner import FederatedRunError, deploy, simulate
    from components.federated.settings import FedSettings
    from components.federated.vlm import merge_into_model, write_site_files

    cfg = ctx.config.federated
    if not cfg.enabled:
        raise StageFailed("federated", "no sites configured: set federated.sites (see configs/federated.yaml)")
    session = connect(ctx)
    with session.child(parent, "federated") as run_id:
        work = _work_dir(ctx, model_dir, data_version)
        out, model_out = work / "out", work / "model"
        settings = FedSettings(
            method=cfg.method, rounds_sparse=cfg.rounds_sparse, rounds_lora=cfg.rounds_lora, density=cfg.density,
            rank=cfg.rank, min_sites=cfg.min_sites, local_steps=cfg.local_steps, lr=cfg.lr,
            batch_size=cfg.batch_size, seed=ctx.config.seed, round_timeout=cfg.round_timeout,
            node_wait_timeout=cfg.node_wait_timeout, task="vlm", out_dir=str(out), aggregation=cfg.aggregation,
            trim_fraction=cfg.trim_fraction, clip_norm=cfg.clip_norm, clip_factor=cfg.clip_factor,
            max_examples=cfg.max_examples, examples_factor=cfg.examples_factor,
            dp_noise_multiplier=cfg.dp.noise_multiplier or 0.0, dp_epsilon=cfg.dp.epsilon or 0.0,
            dp_delta=cfg.dp.delta, secure_aggregation=cfg.secure_aggregation,
            dp_adaptive_clipping=cfg.dp.adaptive_clipping, dp_target_quantile=cfg.dp.target_quantile,
            dp_clip_lr=cfg.dp.clip_lr, dp_count_stddev=cfg.dp.count_stddev or 0.0,
            task_args=_task_args(cfg.mode, model_dir, str(ctx.path(ctx.config.data.out)), work),
        )  # fmt: skip
        session.log_params(
            run_id, {f"federated.{k}": v for k, v in settings.as_dict().items() if k not in ("task_args", "out_dir")}
        )
        session.log_params(run_id, {"federated.mode": cfg.mode, "federated.sites": ",".join(cfg.sites)})
        started = time.perf_counter()
        reused = (model_out / "trained.json").is_file() and (out / DELTAS).is_file()
        if reused:
            history = read_history(out)
        else:
            if cfg.mode == "simulation":  # every site on this machine: each gets its own file from the dataset
                index = write_site_files(
                    ctx.path(ctx.config.data.out), work / "sites", sites=cfg.sites, partition=cfg.partition,
                    alpha=cfg.alpha, seed=ctx.config.seed,
                )  # fmt: skip
                echo(f"federated: {cfg.method} over {len(index['sites'])} sites (simulation) from {model_dir}")
            else:  # each SuperNode reads its own records, given at its start (--node-config data=...)
                echo(f"federated: {cfg.method} on the SuperLink '{cfg.connection}' (each site brings its own "
                     f"records) from {model_dir}")  # fmt: skip
            try:
                if cfg.mode == "simulation":
                    history = simulate(settings, num_sites=len(cfg.sites))
                else:
                    history = deploy(settings, _app_dir(ctx, cfg.app_dir), cfg.connection, echo=echo)
            except FederatedRunError as e:
                if (out / HISTORY).is_file():
                    session.log_artifact(run_id, out / HISTORY)
                raise StageFailed("federated", str(e)) from None
            merge_into_model(
                model_dir, read_deltas(out), model_out,
                meta={"method": cfg.method, "sites": cfg.sites, "rounds": settings.total_rounds, "source": model_dir,
                      "mode": cfg.mode, "secure_aggregation": cfg.secure_aggregation,
                      "aggregation": cfg.aggregation, "privacy": history.get("privacy")},
            )  # fmt: skip
        _log_history(session, run_id, history)
        _log_privacy(session, run_id, history, echo)
        for name in (HISTORY, PLOT):
            if (out / name).is_file():
                session.log_artifact(run_id, out / name, "federated")
        session.log_metrics(run_id, {"federated/seconds": time.perf_counter() - started})
        last = history["rounds"][-1]["summary"] if history["rounds"] else {}
        echo(
            f"federated: {'re-used' if reused else 'finished'} {len(history['rounds'])} rounds, "
            f"site val accuracy {last.get('val_accuracy', math.nan):.3f} -> {model_out}"
        )
        return {"model_dir": str(model_out), "run_id": run_id, "work_dir": str(work)}


def _app_dir(ctx: Context, app_dir: str) -> Path:
    """The Flower app (FAB) folder to submit: ``app_dir`` in the workspace when it holds one, else, for a relative
    path, medtune's own (``infra/flower`` of the installed checkout: ``medtune init`` copies no FAB)."""
    from pipelines.context import PACKAGE_ROOT

    for folder in (ctx.path(app_dir), PACKAGE_ROOT / app_dir):
        if (folder / "pyproject.toml").is_file():
            return folder
    raise StageFailed("federated", f"federated.app_dir: no Flower app (pyproject.toml) in {ctx.path(app_dir)}")


def _task_args(mode: str, model_dir: str, dataset: str, work: Path) -> dict[str, Any]:
    """The vlm task's run config. Simulation: the sites' files this stage writes under ``work/sites``. Deployment:
    nothing about the sites' records, which stay at the sites (each SuperNode's ``--node-config data=...``); the
    model and the dataset's images are paths every SuperNode host must see (shared storage or a local copy), so
    absolute: a SuperNode does not run in the submitter's working directory."""
    args = {"model_dir": str(Path(model_dir).resolve()), "dataset": str(Path(dataset).resolve())}
    return {**args, "sites_dir": str(work / "sites")} if mode == "simulation" else args


def _finite(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and math.isfinite(float(v))}


def _log_privacy(session: Any, run_id: str, history: dict[str, Any], echo: Echo) -> None:
    """Client-level DP: the whole run's guarantee on the stage run and the console (issue 22); per round, the
    epsilon spent so far is ``federated/dp_epsilon`` (from the round summaries, :func:`_log_history`)."""
    privacy = history.get("privacy")
    if not privacy:
        return
    session.log_metrics(
        run_id,
        {
            "federated/dp_epsilon_total": float(privacy["epsilon"]),
            "federated/dp_noise_multiplier": float(privacy["noise_multiplier"]),
        },
    )
    session.log_params(run_id, {"federated.dp_accountant": privacy["accountant"]})
    echo(
        f"federated: client-level DP, epsilon {privacy['epsilon']:.3g} at delta {privacy['delta']:g} "
        f"(noise multiplier {privacy['noise_multiplier']:.3g}, clip {privacy['clip_norm']:g}, Opacus RDP)"
    )


def _log_history(session: Any, run_id: str, history: dict[str, Any]) -> None:
    """Per-round means on the stage run; one child run per site with its own rounds and final score."""
    per_site: dict[str, list[tuple[int, dict[str, float]]]] = {}
    for record in history["rounds"]:
        step = int(record["round"])
        session.log_metrics(run_id, {f"federated/{k}": v for k, v in _finite(record["summary"]).items()}, step=step)
        for site, metrics in record["sites"].items():
            per_site.setdefault(site, []).append((step, _finite(metrics)))
    final = history.get("final", {})
    for site in sorted(set(per_site) | set(final)):
        with session.child(run_id, f"site {site}", tags={"medtune.site": site}) as site_run:
            for step, metrics in per_site.get(site, []):
                session.log_metrics(site_run, metrics, step=step)
            if site in final:
                session.log_metrics(site_run, {f"final/{k}": v for k, v in _finite(final[site]).items()})
            rejected = {r["round"]: r["rejected"][site] for r in history["rounds"] if site in r["rejected"]}
            if rejected:
                session.log_dict(site_run, rejected, "rejected_updates.json")
