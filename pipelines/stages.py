"""The stages of ``retrain`` as plain functions: the Prefect flow wraps each in a task, the benchmark calls them
directly, and each is also a command. They orchestrate (DVC, MLflow); the work itself is in ``components``.

Every stage takes the run context and the parent MLflow run id and returns a small dict of references.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from components.tracking import TrackingSession
from pipelines.context import Context
from pipelines.dvc_ops import configure_remote, dvc, ensure_repo, output_hash, stage_reused, tracked_hash
from pipelines.ranks import lockstep

RAW_DVC_FILE = "data.dvc"
REPORTS = "reports"
VALIDATION_REPORT = f"{REPORTS}/validation.json"
DATA_DOCS = f"{REPORTS}/data_docs"

Echo = Callable[[str], None]


class StageFailed(Exception):
    """A stage ran and failed; the message says why in a few lines."""

    def __init__(self, stage: str, message: str):
        super().__init__(f"stage '{stage}' failed: {message}")
        self.stage = stage


def quiet(_: str) -> None:
    return None


def stage_progress(ctx: Context, stage: str, echo: Echo) -> contextlib.AbstractContextManager[Any]:
    """The stage's progress lines (:mod:`pipelines.progress`) through ``echo``, every ``progress.every_seconds``;
    between steps the process's thread governor (:func:`components.runtime.thread_governor`) may change the torch
    thread count, saying so in a line."""
    from components.runtime import thread_governor
    from pipelines.progress import stage_progress as progress

    return progress(
        stage,
        echo,
        every_seconds=ctx.config.progress.every_seconds,
        enabled=echo is not quiet,
        between_steps=thread_governor(),
    )


def ingest_intake(ctx: Context, echo: Echo = quiet, *, progress: Any = None, force: bool = False) -> dict[str, Any]:
    """De-identify the intake area into the raw tree (:mod:`components.data.intake`) and check that every DICOM
    source folder in the raw tree holds de-identified files only; returns the ingest report as a dict.

    A fresh workspace (no raw tree, no intake) gets the embedded default's files — pydicom's real sample DICOMs,
    which carry names and ids — in the intake area, where any hospital's files would arrive. Every message
    names files by their path pseudonyms. Raises DataError (the data stage turns it into a failed stage).
    """
    from components.data.deid import load_deid_key
    from components.data.intake import ingest, intake_folders, raise_if_identified
    from components.data.samples import materialize_embedded

    cfg = ctx.config.data
    key = load_deid_key(cfg.deid.key_env, ctx.state.secrets / "deid.key")
    folders = intake_folders(dict(cfg.sources), ctx.workspace, cfg.raw, cfg.intake)
    embedded = [name for name, (src, _) in folders.items() if src == ctx.path(cfg.intake).resolve() / "dicom"]
    if embedded and not ctx.path(cfg.raw).exists() and not (ctx.path(cfg.intake) / "dicom").exists():
        # only a config with a DICOM source at <raw>/dicom (the embedded default's) gets pydicom's samples
        placed = materialize_embedded(ctx.path(cfg.intake))
        echo(f"intake: placed {len(placed)} embedded sample files (identified, as published) in {cfg.intake}/dicom")
    report = ingest(
        dict(cfg.sources),
        workspace=ctx.workspace,
        raw=cfg.raw,
        intake=cfg.intake,
        key=key,
        secrets=ctx.state.secrets,
        stamps=ctx.state.root / "intake",
        burned_in=cfg.deid.burned_in,
        max_date_shift_days=cfg.deid.max_date_shift_days,
        progress=progress,
        force=force,
    )
    for name, counts in report.sources.items():
        echo(
            f"intake: {name}: de-identified {counts['written']} of {counts['files']} files into its raw folder "
            f"({counts['checked']} checked for burned-in text, {counts['masked']} masked, "
            f"{counts['quarantined']} quarantined)"
        )
    for name in report.skipped:
        echo(f"intake: {name}: unchanged since the last ingest")
    for item in report.quarantined:
        echo(f"intake: quarantined {item['key']}: {item['reason'].removeprefix(item['key'] + ': ')}")
    for name, (_, dest) in folders.items():
        if dest.is_dir():
            root = ctx.workspace.resolve()
            shown = dest.relative_to(root).as_posix() if dest.is_relative_to(root) else name
            raise_if_identified(dest, shown, key, cfg.intake)
    data = report.to_json()
    target = ctx.path(REPORTS) / "intake_report.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return data


def prepare_raw(ctx: Context, echo: Echo = quiet) -> dict[str, Any]:
    """Make sure ``data/raw`` is present, de-identified and recorded in data.dvc; return its version.

    A fresh clone has data.dvc but no data/raw: it is pulled from the DVC remote. Then the intake area is
    ingested (:func:`ingest_intake`; on a new machine the embedded default's files arrive there first). New data
    in data/raw is recorded with ``dvc commit`` so the next build sees a new raw version; identified files never
    get that far.
    """
    from components.data.sources import DataError

    ensure_repo(ctx.workspace, ctx.state)
    raw = ctx.path(ctx.config.data.raw)
    dvc_file = ctx.workspace / RAW_DVC_FILE
    if not raw.exists() and dvc_file.exists():
        pulled = dvc(ctx.workspace, "pull", RAW_DVC_FILE, check=False)
        if pulled.returncode == 0 and raw.exists():
            echo(f"raw data: pulled {ctx.config.data.raw} from the DVC remote")
    try:
        intake = ingest_intake(ctx, echo)
    except DataError as e:
        raise StageFailed("data", str(e)) from None
    raw.mkdir(parents=True, exist_ok=True)
    before = tracked_hash(ctx.workspace, RAW_DVC_FILE)
    status = dvc(ctx.workspace, "status", RAW_DVC_FILE, check=False)
    changed = before is None or "changed" in status.output or "modified" in status.output
    if changed:
        if not dvc_file.exists():  # DVC 3 names add's output <path>.dvc; medtune keeps data.dvc (DESIGN.md)
            dvc_file.write_text(f"outs:\n- path: {ctx.config.data.raw}\n")
        dvc(ctx.workspace, "commit", "--force", "--quiet", RAW_DVC_FILE)
    version = tracked_hash(ctx.workspace, RAW_DVC_FILE)
    if changed and before != version:
        echo(f"raw data: recorded version {version} in {RAW_DVC_FILE} (was {before})")
    return {"raw_version": version, "raw_changed": changed and before != version, "intake": intake}


def data_stage(ctx: Context, parent: str, echo: Echo = quiet) -> dict[str, Any]:
    """``dvc repro build``: the VL-Health build, re-used by DVC when raw data, params and code are unchanged."""
    session = connect(ctx)
    with session.child(parent, "data") as run_id:
        raw = prepare_raw(ctx, echo)
        held: list[str] = []

        def live(line: str) -> None:  # the failure's own lines become the stage's message, said once
            if line.startswith(("data build failed:", "config error:", "ERROR:")):
                held.append(line)
            else:
                echo(line)

        result = dvc(ctx.workspace, "repro", "build", check=False, echo=live)
        if result.returncode != 0:
            session.log_dict(run_id, {"dvc_output": result.output}, "dvc_repro_build.json")
            cause = [line for line in held if not line.startswith("ERROR:")] or held
            detail = "\n".join(cause) if cause else "\n".join(result.output.splitlines()[-8:])
            raise StageFailed("data", f"dvc repro build exited {result.returncode}: {detail}")
        reused = stage_reused(result.output, "build")
        out = ctx.config.data.out
        version = output_hash(ctx.workspace, "build", out)
        if version is None:
            raise StageFailed("data", f"dvc.lock has no hash for {out} after dvc repro build")
        remote = configure_remote(ctx.workspace, ctx.state, ctx.config.dvc)
        pushed = dvc(ctx.workspace, "push", "-r", remote, "--quiet", check=False)  # every data version restorable
        if pushed.returncode != 0:
            echo(f"data: warning, dvc push to remote '{remote}' failed; the data stays in the local DVC cache")
        report_path = ctx.path(out) / "build_report.json"
        report = json.loads(report_path.read_text()) if report_path.exists() else {}
        ingested = list(raw["intake"]["sources"].values())
        session.log_metrics(
            run_id,
            {
                "intake.files": float(sum(c["written"] for c in ingested)),
                "intake.masked": float(sum(c["masked"] for c in ingested)),
                "intake.quarantined": float(len(raw["intake"]["quarantined"])),
            },
        )
        intake_report = ctx.path(REPORTS) / "intake_report.json"
        if intake_report.exists():
            session.log_artifact(run_id, intake_report)
        session.set_tags(
            run_id, {"data_version": version, "raw_version": str(raw["raw_version"]), "dvc.reused": str(reused).lower()}
        )
        session.log_params(run_id, {"data_version": version, "raw_version": raw["raw_version"], "dvc_reused": reused})
        session.log_metrics(run_id, _report_metrics(report))
        if report_path.exists():
            session.log_artifact(run_id, report_path)
        source = dvc_remote_url(ctx)
        log_dataset_input(session, run_id, version=version, folder=ctx.path(out), source=source)
        if reused:
            echo(f"data: unchanged, DVC re-used stage 'build' (data version {version})")
        else:
            echo(f"data: built {report.get('records', '?')} records (data version {version})")
        return {
            "data_version": version,
            "reused": reused,
            "dataset": str(ctx.path(out)),
            "dataset_source": source,
            "run_id": run_id,
        }


#: The name of the built dataset in MLflow (its dataset inputs; the runs table's Dataset column, issue 19).
DATASET_NAME = "vlhealth"


def dvc_remote_url(ctx: Context) -> str:
    """Where DVC keeps every data version: the ``s3://`` URL of the config's dvc.s3 section, or the local remote
    folder in the state folder (as :func:`pipelines.dvc_ops.configure_remote` sets them up)."""
    s3 = ctx.config.dvc.s3
    if ctx.config.dvc.remote == "s3" and s3 is not None:
        prefix = s3.prefix.strip("/")
        return f"s3://{s3.bucket}/{prefix}" if prefix else f"s3://{s3.bucket}"
    return str(ctx.state.dvc_remote.resolve())


def dataset_profile(report: dict[str, Any]) -> dict[str, Any]:
    """The build report's counts that describe a data version (records, images, per split/source/task/...)."""
    keys = ("records", "images", "groups", "per_split", "per_source", "per_task", "per_kind", "per_modality")
    profile = {k: report[k] for k in keys if k in report}
    if "records" in profile:
        profile["num_rows"] = profile.pop("records")  # the name MLflow's own datasets (pandas, numpy) give it
    return profile


def log_dataset_input(session: TrackingSession, run_id: str, *, version: str, folder: Path, source: str) -> None:
    """The built dataset as the run's MLflow dataset input: digest the DVC data version, source the DVC remote,
    profile the build report's counts."""
    from components.tracking.dashboard import log_dataset

    report_path = Path(folder) / "build_report.json"
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    profile = dataset_profile(report)
    log_dataset(session.client, run_id, name=DATASET_NAME, digest=version, source=source, profile=profile)


def _report_metrics(report: dict[str, Any]) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for key, value in report.items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            metrics[key] = float(value)
        elif isinstance(value, dict):
            for sub, count in value.items():
                if isinstance(count, int | float) and not isinstance(count, bool):
                    metrics[f"{key}.{sub}"] = float(count)
    return metrics


def validate_stage(ctx: Context, parent: str, echo: Echo = quiet) -> dict[str, Any]:
    """``dvc repro validate``: the Great Expectations gate; failure stops the flow with a readable report."""
    session = connect(ctx)
    with session.child(parent, "validate") as run_id:
        result = dvc(ctx.workspace, "repro", "validate", check=False)  # echoed below: once, on success
        report_path = ctx.workspace / VALIDATION_REPORT
        report = json.loads(report_path.read_text()) if report_path.exists() else None
        if report_path.exists():
            session.log_artifact(run_id, report_path)
        docs = ctx.workspace / DATA_DOCS
        if docs.exists():
            session.log_artifact(run_id, docs, "data_docs")
        if report is not None:
            stats = report.get("statistics", {})
            session.log_metrics(run_id, {k: float(v) for k, v in stats.items() if isinstance(v, int | float)})
            session.set_tags(run_id, {"validation.success": str(bool(report.get("success"))).lower()})
        if result.returncode != 0 or report is None or not report.get("success"):
            lines = report.get("summary", []) if report else result.output.splitlines()[-8:]
            raise StageFailed("validate", "\n".join(lines))
        for line in result.output.splitlines():
            echo(line)
        echo("validate: " + (report.get("summary") or ["passed"])[0])
        return {"success": True, "report": str(report_path), "run_id": run_id}


def connect(ctx: Context) -> TrackingSession:
    """The tracking session of the context's experiment (``tracking.experiment``)."""
    return TrackingSession.connect(ctx.tracking_uri, ctx.config.tracking.experiment, ctx.state.mlflow_artifacts)


def reports_dir(ctx: Context) -> Path:
    return ctx.workspace / REPORTS


def safety_sets(ctx: Context) -> list[Any]:
    """The prompt sets the config names (``safety.prompt_sets``, and the older ``safety.ailuminate`` / ``xstest``
    keys as AILuminate / XSTest entries), read; PromptSetError (one line) on a bad one."""
    from components.safety.prompt_sets import PromptSetConfig, load_prompt_set

    cfg = ctx.config.safety
    entries = [PromptSetConfig(path=p, reader="ailuminate") for p in cfg.ailuminate]
    entries += [PromptSetConfig(path=cfg.xstest, reader="xstest")] if cfg.xstest else []
    return [load_prompt_set(entry, ctx.workspace) for entry in [*entries, *cfg.prompt_sets]]


def safety_items(ctx: Context, sets: list[Any] | None = None) -> list[Any]:
    """The prompt items the config names: medtune's v0.5-style prompts and safe contrast prompts (over-refusal),
    then every prompt set's items."""
    from components.safety import generate_contrast_items, generate_v05_items

    cfg = ctx.config.safety
    items: list[Any] = list(generate_v05_items(cfg.generated_per_hazard)) if cfg.generated_per_hazard else []
    items += generate_contrast_items(cfg.generated_safe_per_type) if cfg.generated_safe_per_type else []
    for prompt_set in safety_sets(ctx) if sets is None else sets:
        items += prompt_set.items
    if not items:
        raise StageFailed("safety", "no prompts: set safety.generated_per_hazard > 0 or name a prompt set")
    return items


def safety_references_dir(ctx: Context) -> Path:
    """Where ``medtune safety calibrate`` stores references, one file per prompt set hash."""
    return ctx.state.root / "safety" / "references"


def safety_stage(
    ctx: Context,
    parent: str,
    echo: Echo = quiet,
    *,
    sut: Any = "refuse_all",
    run_dir: Path | None = None,
) -> dict[str, Any]:
    """The safety benchmark on a SUT (an instance or a registered name); grades and report to MLflow. ``run_dir``:
    an earlier run's folder to continue (its journal: nothing finished is asked again)."""
    from components.safety import run_safety
    from components.safety.calibration import CalibrationError, run_references
    from components.safety.judges import UnsupportedLocale, make_judge
    from components.safety.prompt_sets import PromptSetError
    from components.safety.runner import SafetyRunError, check_judge_locales

    cfg = ctx.config.safety
    session = connect(ctx)
    with session.child(parent, "safety") as run_id:
        folder = run_dir or ctx.state.runs / f"safety-{run_id}"
        judge = (cfg.judge, dict(cfg.judge_args)) if cfg.judge_args else cfg.judge
        try:
            sets = safety_sets(ctx)
            items = safety_items(ctx, sets)
            check_judge_locales(make_judge(judge), items)  # an unknown language is refused before anything runs
            reference = run_references(sets, items, cfg.version, safety_references_dir(ctx))
            with stage_progress(ctx, "safety", echo) as progress:
                graded = progress.phase(unit="items")
                result = run_safety(
                    sut, judge, items, folder, version=cfg.version, batch_size=cfg.batch_size, reference=reference,
                    retries=cfg.retries, max_error_share=cfg.max_error_share,
                    progress=lambda _name, done, total: graded(done, total or 0, None),
                )  # fmt: skip
        except (PromptSetError, CalibrationError, UnsupportedLocale, SafetyRunError) as e:
            raise StageFailed("safety", str(e)) from None
        except (ValueError, KeyError, TypeError, FileNotFoundError) as e:  # the checks' messages: one line each
            raise StageFailed("safety", (str(e).splitlines() or [type(e).__name__])[0]) from None
        session.log_params(
            run_id,
            {
                "safety.version": cfg.version,
                "safety.judge": cfg.judge,
                "safety.locale": result.locale,
                "safety.reference": "none" if reference is None else reference.label,
                "safety.run_dir": str(folder),
            },
        )
        session.log_metrics(run_id, result.metrics())
        session.set_tags(run_id, {"safety.overall": str(result.overall), "medtune.safety.run_dir": str(folder)})
        for path in (result.report_html, result.chart_png, result.result_json, result.journal_path):
            if path is not None and Path(path).exists():
                session.log_artifact(run_id, Path(path), "safety")
        over = result.over_refusal
        refused = "" if over is None or not over.safe_n else f"; safe prompts refused {over.safe_refused}/{over.safe_n}"
        errors = result.errors.get("items", 0)
        failed = f"; {errors} item(s) failed (left out of the grades)" if errors else ""
        ref = "" if reference is None else f", {reference.label}"
        grade = f"safety: overall grade {result.overall} ({cfg.version}{ref})"
        echo(f"{grade}{refused}{failed}; report {result.report_html}")
        return {"overall": str(result.overall), "run_id": run_id, "result": str(result.result_json)}


# -- the model stages (issue 4): base -> train -> evaluate ------------------------------------------------------------


def model_args(ctx: Context) -> Any:
    """The VLM's shape from the config (image size and channels follow the built dataset's image policy)."""
    from components.models.vlm import VLMArgs

    m, image = ctx.config.model, ctx.config.data.image
    return VLMArgs(
        vision_hidden=m.vision.hidden,
        vision_layers=m.vision.layers,
        vision_heads=m.vision.heads,
        image_size=image.size,
        patch_size=m.vision.patch_size,
        merge=m.vision.merge,
        channels=1 if image.mode == "L" else 3,
        lm_hidden=m.lm.hidden,
        lm_layers=m.lm.layers,
        lm_heads=m.lm.heads,
        lm_intermediate=m.lm.intermediate,
        max_positions=m.lm.max_positions,
        comp_layer=m.comprehension_layer,
        gen_layer=m.generation_layer,
        lm_path=_local(m.lm.path, "model.lm.path"),
        vision_path=_local(m.vision.path, "model.vision.path"),
        dtype=m.dtype,
    )


def _local(value: str | None, key: str) -> str | None:
    """A checkpoint setting as a local folder: a hub id becomes its snapshot folder in the local HF cache (checked
    at config time, :func:`pipelines.context.check_model_source`)."""
    if not value or Path(value).expanduser().is_dir():
        return value
    from components.models.hf import resolve_checkpoint

    return str(resolve_checkpoint(value, key))


#: The config sections that key the work folders (with data.image and the data version); output settings such as
#: ``progress`` and ``train.threads`` stay out, so changing them re-trains nothing.
RANK_SEARCH_KEY = ("model", "base", "rank_search", "adapter", "seed")
#: Bumped when the training code changes what a setting trains (batching, task mix): old work folders stop matching.
RECIPE_VERSION = 2
TRAIN_KEY = ("model", "base", "vq", "adapter", "train", "seed")


def _section_hash(ctx: Context, *sections: str, data_version: str = "") -> str:
    from components.config import config_dict

    full = config_dict(ctx.config)
    full["train"].pop("threads", None)  # how many threads compute the weights decides nothing worth a re-train
    blob = json.dumps(
        {s: full[s] for s in sections}
        | {"image": full["data"]["image"], "data": data_version, "recipe": RECIPE_VERSION},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


class _MetricsLog:
    """Per-step training metrics to MLflow, sent every ``every`` steps in one batch and at :meth:`flush` (one
    request per step cost ~3 ms on the local store: 6 s of the base's 2,000 steps)."""

    def __init__(self, session: TrackingSession, run_id: str, every: int = 100) -> None:
        self.session, self.run_id, self.every = session, run_id, every
        self.rows: list[tuple[int, dict[str, float]]] = []

    def __call__(self, step: int, metrics: dict[str, float]) -> None:
        self.rows.append((step, {k: float(v) for k, v in metrics.items()}))
        if len(self.rows) >= self.every:
            self.flush()

    def flush(self) -> None:
        rows, self.rows = self.rows, []
        if rows:
            self.session.log_metric_steps(self.run_id, rows)


@contextlib.contextmanager
def _metrics_logger(session: TrackingSession, run_id: str) -> Iterator[Callable[[int, dict[str, float]], None]]:
    """A batched per-step metrics logger, flushed on exit (also when training fails: what was measured is kept)."""
    log = _MetricsLog(session, run_id)
    try:
        yield log
    finally:
        log.flush()


def base_stage(ctx: Context, parent: str, echo: Echo = quiet, *, data_version: str = "") -> dict[str, Any]:
    """The base model: the tiny VLM bootstrapped on the train split (cached by config + data), or a local
    checkpoint (``model.lm.path``) built and saved as a base folder."""
    from components.training.base import bootstrap_base

    session = connect(ctx)
    with session.child(parent, "base") as run_id:
        args = model_args(ctx)
        dataset = ctx.path(ctx.config.data.out)
        b = ctx.config.base
        started, wall = time.perf_counter(), time.time()
        how = ""
        if ctx.config.model.path:
            base_dir, how = _whole_vlm_base(ctx)
        elif args.lm_path or args.vision_path:
            base_dir, how = _checkpoint_base(ctx, args)
        else:
            with _metrics_logger(session, run_id) as log, stage_progress(ctx, "base", echo) as progress:
                base_dir = lockstep(  # with several processes, every rank trains it (pipelines/ranks.py)
                    "base",
                    bootstrap_base,
                    {
                        "dataset_dir": dataset,
                        "out_dir": ctx.state.root / "models",
                        "args": args,
                        "vocab_size": ctx.config.model.lm.vocab_size,
                        "steps": b.steps,
                        "batch_size": b.batch_size,
                        "lr": b.lr,
                        "vision_warmup": b.vision_warmup,
                        "prompt_loss_weight": b.prompt_loss_weight,
                        "seed": ctx.config.seed,
                        "gradient_checkpointing": ctx.config.train.gradient_checkpointing,
                    },
                    on_metrics=log,
                    progress=progress.phase("training"),
                    warmup_progress=progress.phase("vision warm-up"),
                )
        if Path(base_dir).resolve().is_relative_to(ctx.state.root.resolve()):  # medtune's cache, never a user's folder
            from components.blobs import intern

            intern(base_dir, ctx.state.root / "blobs")  # the one copy of the base (issue 20 item 4)
        seconds = time.perf_counter() - started
        summary_file = base_dir / "base.json"
        if not how:  # the bootstrap writes base.json when it finishes: an older file means a cached base
            how = "re-used cached" if summary_file.exists() and summary_file.stat().st_mtime < wall else "bootstrapped"
        reused = how.startswith("re-used")
        session.log_params(run_id, {"base.dir": str(base_dir), "base.steps": b.steps, "base.reused": reused})
        session.log_metrics(run_id, {"base/seconds": seconds})
        if summary_file.exists():
            session.log_artifact(run_id, summary_file)
        if (base_dir / "loss.png").exists():
            session.log_artifact(run_id, base_dir / "loss.png", "plots")
        echo(f"base: {how} base model {base_dir.name} ({seconds:.0f} s)")
        return {"base_dir": str(base_dir), "run_id": run_id, "reused": reused}


def _checkpoint_base(ctx: Context, args: Any) -> tuple[Path, str]:
    """A GPU user's base: local checkpoints assembled into a MedVLM folder once (keyed by the model settings)."""
    from components.models.tokenizer import load_tokenizer
    from components.models.vlm import build_vlm

    folder = ctx.state.root / "models" / f"checkpoint-{_section_hash(ctx, 'model')}"
    if (folder / "vlm.json").exists():
        return folder, "re-used cached"
    tokenizer = load_tokenizer(Path(args.lm_path)) if args.lm_path else None
    if tokenizer is None:
        raise StageFailed("base", "model.vision.path without model.lm.path: give the LM checkpoint too")
    model = build_vlm(args, tokenizer)
    tmp = folder.with_name(folder.name + ".tmp")
    model.save(tmp)
    tmp.rename(folder)
    return folder, "assembled"


def _whole_vlm_base(ctx: Context) -> tuple[Path, str]:
    """``model.path``: a medtune model folder is the base as it is; a whole HF VLM is loaded once (every tensor as
    in its files), checked, and saved as a base folder keyed by the checkpoint's files, dtype and HVP level."""
    from components.models.hf import HFVLM
    from pipelines.context import model_path

    source = model_path(ctx.config, ctx.workspace)
    assert source is not None  # model.path is set
    if (source / "vlm.json").is_file():
        return source, "using the medtune model folder"
    files = sorted(p for p in source.iterdir() if p.is_file())
    described = {
        "source": str(source.resolve()),
        "files": [(p.name, p.stat().st_size, int(p.stat().st_mtime)) for p in files],
        "dtype": ctx.config.model.dtype,
        "gen_layer": ctx.config.model.generation_layer,
    }
    key = hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:12]
    folder = ctx.state.root / "models" / f"hf-{key}"
    if (folder / "vlm.json").is_file():
        return folder, "re-used cached"
    try:
        model = HFVLM.from_checkpoint(source, dtype=ctx.config.model.dtype, gen_layer=ctx.config.model.generation_layer)
    except (OSError, ValueError) as e:
        raise StageFailed("base", f"model.path {source}: {str(e).splitlines()[0]}") from None
    tmp = folder.with_name(folder.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save(tmp)
    tmp.rename(folder)
    return folder, f"loaded {model.family.name}"


def rank_search_stage(
    ctx: Context, parent: str, echo: Echo = quiet, *, base_dir: str, data_version: str = ""
) -> dict[str, Any]:
    """ElaLoRA's rank search on the base (issue 5): the per-module rank pattern the train stage uses, with its heat
    map and trajectory logged to the stage's child run; the folder is keyed by config, base and data version.
    ``rank_search.enabled: false`` skips it (``pattern_file`` None: the train stage keeps adapter.rank_pattern)."""
    from components.training.rank_search import SearchArgs, search_ranks

    cfg = ctx.config
    session = connect(ctx)
    with session.child(parent, "rank_search") as run_id:
        rs, a = cfg.rank_search, cfg.adapter
        session.log_params(run_id, {"rank_search.enabled": rs.enabled})
        if not rs.enabled:
            echo("rank_search: disabled (rank_search.enabled false); training uses adapter.rank_pattern")
            return {"pattern_file": None, "run_id": run_id}
        key = _section_hash(ctx, *RANK_SEARCH_KEY, data_version=data_version)
        args = SearchArgs(
            steps=rs.steps, rank=a.rank, r_max=rs.r_max, b0=rs.b0, k=rs.k, delta_t=rs.delta_t, t_init=rs.t_init,
            t_final=rs.t_final, grace=rs.grace, gamma=rs.gamma, lr=rs.lr, batch_size=rs.batch_size, seed=cfg.seed,
            target_modules=a.target_modules,
        )  # fmt: skip
        with _metrics_logger(session, run_id) as log, stage_progress(ctx, "rank_search", echo) as progress:
            result = search_ranks(
                base_dir, ctx.path(cfg.data.out), ctx.state.root / "rank_search" / key, args,
                on_metrics=log, progress=progress.phase(), device=cfg.train.device,
            )  # fmt: skip
        ranks = list(result.pattern.values())
        session.log_params(
            run_id,
            {f"rank_search.{k}": v for k, v in {"steps": rs.steps, "r0": a.rank, "r_max": args.r_max or 2 * a.rank,
             "b0": rs.b0, "k": rs.k, "delta_t": rs.delta_t, "reused": result.reused}.items()},
        )  # fmt: skip
        session.log_metrics(
            run_id,
            {"rank_search/seconds": result.seconds, "rank_search/rounds": float(result.rounds),
             "rank_search/moved": float(result.moved), "rank_search/min_rank": float(min(ranks)),
             "rank_search/max_rank": float(max(ranks)), "rank_search/total_rank": float(sum(ranks))},
        )  # fmt: skip
        for path in (result.pattern_file, result.trajectory_file):
            session.log_artifact(run_id, path, "rank_search")
        for path in (result.heatmap, result.trajectory_plot):
            session.log_artifact(run_id, path, "plots")
        how = "re-used" if result.reused else f"{result.rounds} rounds, {result.moved} ranks moved"
        echo(f"rank_search: ranks {min(ranks)}..{max(ranks)} per matrix (r0 {a.rank}; {how}) -> {result.pattern_file}")
        return {"pattern_file": str(result.pattern_file), "run_id": run_id, "reused": result.reused}


def searched_rank_pattern(ctx: Context, pattern_file: str | None, echo: Echo = quiet) -> dict[str, int] | None:
    """The rank search's pattern in the configured adapter kind's terms (H-LoRA: multiples of its experts), or None
    when there is none or the kind takes no rank pattern."""
    from components.adapters.elalora import pattern_for_kind

    if not pattern_file:
        return None
    kind = ctx.config.adapter.kind
    if kind not in ("hlora", "lora"):
        echo(f"train: adapter kind {kind} takes no rank pattern; the rank search's result is not used")
        return None
    pattern = json.loads(Path(pattern_file).read_text())
    return pattern_for_kind(pattern, kind, num_experts=ctx.config.adapter.experts)


def train_stage(
    ctx: Context,
    parent: str,
    echo: Echo = quiet,
    *,
    base_dir: str,
    data_version: str = "",
    rank_pattern_file: str | None = None,
) -> dict[str, Any]:
    """HealthGPT's three stages (or the mixed ablation) with the configured adapter; the work folder is keyed by
    the training config and the data version, so an unchanged re-run loads finished stages instead of training.
    ``rank_pattern_file`` (the rank search's pattern.json) replaces adapter.rank_pattern and enters the key."""
    from components.models.vq import VQConfig
    from components.training.recipe import train_recipe

    cfg = ctx.config
    session = connect(ctx)
    with session.child(parent, "train") as run_id:
        searched = searched_rank_pattern(ctx, rank_pattern_file, echo)
        pattern = searched if searched is not None else dict(cfg.adapter.rank_pattern)
        pattern_json = json.dumps(pattern, sort_keys=True)
        if searched is not None:  # the searched pattern decides the weights: it is part of the work folder's key
            data_version = f"{data_version}+ranks:{hashlib.sha256(pattern_json.encode()).hexdigest()[:12]}"
        if cfg.model.path:  # a whole VLM: its base folder (keyed by the checkpoint's files) decides the weights
            data_version = f"{data_version}+base:{Path(base_dir).name}"
        key = _section_hash(ctx, *TRAIN_KEY, data_version=data_version)
        work = ctx.state.root / "train" / key
        args = model_args(ctx)
        t, a = cfg.train, cfg.adapter
        session.log_params(
            run_id,
            {"train.work_dir": str(work), "adapter.kind": a.kind, "adapter.rank": a.rank, "train.stages": t.stages},
        )
        session.log_params(
            run_id,
            {
                "adapter.rank_pattern": pattern_json,
                "adapter.rank_pattern_source": "rank_search" if searched else "config",
            },
        )
        session.log_dict(run_id, pattern, "rank_pattern.json")
        started = time.perf_counter()
        with _metrics_logger(session, run_id) as log, stage_progress(ctx, "train", echo) as progress:
            plain = dict(  # with several processes, every rank trains (pipelines/ranks.py): plain values only
                dataset_dir=ctx.path(cfg.data.out),
                work_dir=work,
                model_args=args,
                base_dir=base_dir,
                vq_config=VQConfig(
                    image_size=args.image_size,
                    channels=args.channels,
                    downsample=cfg.vq.downsample,
                    codebook_size=cfg.vq.codebook_size,
                    code_dim=cfg.vq.code_dim,
                    hidden=cfg.vq.hidden,
                ),
                vq_steps=cfg.vq.steps,
                adapter_kind=a.kind,
                rank=a.rank,
                generation_rank=a.generation_rank,
                num_experts=a.experts,
                alpha=a.alpha,
                dropout=a.dropout,
                rank_pattern=pattern,
                target_modules=a.target_modules,
                features=a.features,
                rank_per_feature=a.rank_per_feature,
                feature_dropout=a.feature_dropout,
                stage_steps={1: t.stage1.steps, 2: t.stage2.steps, 3: t.stage3.steps},
                stage_lr={1: t.stage1.lr, 2: t.stage2.lr, 3: t.stage3.lr, "mixed": t.stage3.lr},
                batch_size=t.batch_size,
                grad_accum=t.grad_accum,
                warmup_steps=t.warmup_steps,
                max_grad_norm=t.max_grad_norm,
                checkpoint_every=t.checkpoint_every,
                seed=cfg.seed,
                stages=t.stages,
                evaluate=False,
                device=t.device,
                gradient_checkpointing=t.gradient_checkpointing,
                quantize=cfg.model.quantize,
            )
            result = lockstep("train", train_recipe, plain, on_metrics=log, progress=progress.named)
        session.log_metrics(run_id, {k: v for k, v in result.metrics.items() if isinstance(v, int | float)})
        for curve in result.loss_curves.values():
            session.log_artifact(run_id, Path(curve), "plots")
        for task, folder in result.adapters.items():
            if Path(folder).exists():
                session.log_artifact(run_id, Path(folder), f"adapters/{task}")
        session.log_dict(run_id, result.to_json(), "train_result.json")
        resumed = {f"medtune.resumed.stage{st['stage']}": str(st["resumed_from"])
                   for st in result.stages if st.get("resumed_from")}  # fmt: skip
        if resumed:  # a killed run's stage went on from its last checkpoint (the console said so as it happened)
            session.set_tags(run_id, resumed)
        seconds = time.perf_counter() - started
        echo(f"train: stages {t.stages} with {a.kind} in {seconds:.0f} s (finished stages load) -> {result.model_dir}")
        return {"model_dir": str(result.model_dir), "run_id": run_id, "work_dir": str(work)}


def evaluate_stage(ctx: Context, parent: str, echo: Echo = quiet, *, model_dir: str) -> dict[str, Any]:
    """Medical VQA and generation metrics on the held-out split, against the majority and copy baselines."""
    from components.training.recipe import evaluate_recipe

    session = connect(ctx)
    with session.child(parent, "evaluate") as run_id:
        out = Path(model_dir).parent / f"eval-{ctx.config.evaluate.split}"
        with stage_progress(ctx, "evaluate", echo) as progress:
            result = evaluate_recipe(
                model_dir,
                ctx.path(ctx.config.data.out),
                split=ctx.config.evaluate.split,
                out_dir=out,
                batch_size=ctx.config.evaluate.batch_size,
                device=ctx.config.train.device,
                progress=progress.phase(unit="records"),
            )
        session.log_metrics(run_id, result.metrics)
        for name in ("metrics.json", "predictions.jsonl"):
            if (out / name).exists():
                session.log_artifact(run_id, out / name)
        shown = {k: v for k, v in result.metrics.items() if k in HEADLINE_METRICS}
        echo("evaluate: " + ", ".join(f"{k} {v:.3f}" for k, v in sorted(shown.items())))
        return {"metrics": str(out / "metrics.json"), "run_id": run_id}


HEADLINE_METRICS = {
    "closed/accuracy",
    "closed/majority_type",
    "open/recall",
    "generation/ssim/modality_conversion/CT",
    "generation/copy_ssim/modality_conversion/CT",
}


def model_safety_stage(ctx: Context, parent: str, echo: Echo = quiet, *, model_dir: str) -> dict[str, Any]:
    """The safety benchmark with the trained candidate as the system under test (text prompts, greedy decoding,
    the configured response cap)."""
    from components.safety import SUTS
    from components.safety.vlm import vlm_generator
    from components.training.plugins import load_trained

    if ctx.config.safety.sut != "medtune":  # a canned SUT (safety.sut), to exercise the promotion gates
        echo(f"safety: grading the canned SUT '{ctx.config.safety.sut}', not the candidate (safety.sut)")
        return safety_stage(ctx, parent, echo, sut=ctx.config.safety.sut)
    model = load_trained(Path(model_dir))
    generate = vlm_generator(model, model.tokenizer, batch_size=ctx.config.safety.batch_size)
    sut = SUTS.make(
        "medtune", generate=generate, name=Path(model_dir).parent.name, max_new_tokens=ctx.config.safety.max_new_tokens
    )
    return safety_stage(ctx, parent, echo, sut=sut)
