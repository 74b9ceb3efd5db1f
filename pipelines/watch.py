"""Data-triggered retraining (issue 19, item 5): ``medtune watch`` starts one retrain when new data lands.

    medtune watch                                  # watch the intake, the raw tree and data.dvc; until Ctrl-C
    medtune watch --cron "0 2 * * *"               # and retrain nightly too, from the same deployment
    medtune watch -c configs/smoke.yaml --every 1 --quiet 3 train.stage1.steps=1    # overrides go to the runs

**What is watched.** New data arrives three ways: identified DICOM in the intake area (``data.intake``; the data
stage de-identifies it into the raw tree), de-identified files copied straight into the raw tree (``data.raw``),
and a new DVC version (``git pull`` + ``dvc pull``: data.dvc's recorded hash and the raw tree change). Every
``--every`` seconds the watcher lists both trees (path, size, mtime, inode: one ``stat`` per file, nothing read)
and reads data.dvc's hash. The raw folders of DICOM sources are left out: the data stage writes them from the
intake, which is watched instead. A change starts a run only once nothing has moved for ``--quiet`` seconds, so a
copy in progress does not start a run half-way. File names are never shown (an intake path may name a patient):
messages give counts.

**What is the data stage's own doing.** A run writes the trees it reads: ``dvc commit`` rewrites data.dvc and
re-links every raw file (new mtime and inode, same bytes), the ingest fills the DICOM sources' raw folders. So a
raw file whose stat changed but whose size did not is compared by content (SHA-256, computed only for such files
and cached by stat), and a data.dvc hash that changes while any medtune command holds the workspace is taken as
that command's. Without this every retrain would start another.

**One run at a time, changes coalesced.** The watcher starts a run only when its previous run has ended and the
workspace lock (pipelines/lock.py) is free: a change that lands while a retrain (this watcher's, a cron run, a
``medtune run``) holds the workspace waits for it to end, and everything that landed meanwhile starts one
follow-up run, not one per file. A run's baseline is the data as it was when the run started. A run that ends,
however it ends (a failed gate included), consumes its change: the same data does not start it again.

**Why a watcher loop and ``run_deployment``, not a Prefect event trigger.** Prefect 3.7's own server (OSS) has
automations and deployment triggers, but no file-system events: something must poll the trees and emit events
anyway. The debounce and the coalescing need state a trigger does not keep (a ``DeploymentEventTrigger`` fires per
matching event or per count in a window; with the deployment's concurrency limit and ENQUEUE it would queue one run
per file, with CANCEL_NEW it would drop the follow-up). So the watcher decides, and Prefect runs: ``retrain`` is
served as the deployment ``retrain/watched`` (:func:`pipelines.schedule.scheduled_retrain`, the cron runs' flow,
which takes the workspace lock in the run's process) with a concurrency limit of 1, and each change creates a flow
run of it with ``run_deployment``; runs show in the Prefect UI beside the cron runs, tagged ``data-change``. The
local server is :func:`pipelines.schedule.prefect_server`, as for ``medtune schedule`` (or ``$PREFECT_API_URL``).

**Stopping.** Ctrl-C or SIGTERM stops the watcher, then the runner, then the server it started. A retrain still
running is not waited for (a default retrain takes minutes): the runner sends it SIGTERM, the flow marks its MLflow
runs FAILED and releases the workspace lock; one that does not end within 30 s is killed, and the next command that
takes the workspace marks its runs KILLED (pipelines/lock.py, ``reconcile``).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from pipelines.context import Context
from pipelines.lock import read_holder

DEPLOYMENT = "watched"
EVERY_S = 5.0  # seconds between looks at the trees
QUIET_S = 15.0  # a change starts a run after the trees have not moved for this long
LOCK_WAIT_S = 3600.0  # a triggered run waits this long for a workspace taken between the watcher's look and its start

Stat = tuple[int, int, int]  # size, mtime (ns), inode
Files = dict[str, Stat]  # relative path -> stat; held in memory only, never shown


@dataclass(frozen=True)
class Snapshot:
    """The watched state: the intake's files, the raw tree's (less the ingest's folders), data.dvc's hash."""

    intake: Files
    raw: Files
    dvc: str | None


@dataclass
class Change:
    """What differs from the baseline, in counts (names are never shown)."""

    intake: tuple[int, int, int] = (0, 0, 0)  # new, changed, removed
    raw: tuple[int, int, int] = (0, 0, 0)
    dvc: tuple[str | None, str | None] | None = None  # (was, now)

    def __bool__(self) -> bool:
        return any(self.intake) or any(self.raw) or self.dvc is not None

    def describe(self, intake: str, raw: str) -> str:
        parts = [_counts(c, where) for c, where in ((self.intake, intake), (self.raw, raw)) if any(c)]
        if self.dvc is not None:
            parts.append(f"data.dvc records {self.dvc[1] or 'nothing'} (was {self.dvc[0] or 'nothing'})")
        return "; ".join(parts)


def _counts(c: tuple[int, int, int], where: str) -> str:
    said = [f"{n} {what}" for n, what in zip(c, ("new", "changed", "removed"), strict=True) if n]
    return f"{', '.join(said)} file{'s' if sum(c) != 1 else ''} in {where}"


def scan(root: Path, skip: Callable[[Path], bool] = lambda _: False) -> Files:
    """Every regular file under ``root`` (symlinks followed to files, not into folders) with its stat; folders for
    which ``skip`` is true are not entered. A file that goes while it is listed is left out."""
    out: Files = {}
    if not root.is_dir():
        return out
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        dirs[:] = [d for d in dirs if not skip(here / d)]
        for name in files:
            path = here / name
            try:
                st = path.stat()
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                out[path.relative_to(root).as_posix()] = (st.st_size, st.st_mtime_ns, st.st_ino)
    return out


def dvc_hash(dvc_file: Path) -> str | None:
    """data.dvc's recorded hash (None: no file, or none recorded yet)."""
    from pipelines.dvc_ops import tracked_hash

    try:
        return tracked_hash(dvc_file.parent, dvc_file.name)
    except (OSError, ValueError):  # half written, or not YAML: the next look reads it again
        return None


def workspace_holder(lock_file: Path) -> str | None:
    """Who holds the workspace (pipelines/lock.py), read from the lock file without touching the lock: a probe
    that took it, however briefly, could make a ``medtune run`` started at that moment exit 'workspace busy'."""
    holder = read_holder(lock_file)
    if holder is None or holder.alive() is False:  # released (emptied), or its holder died (the kernel freed it)
        return None
    return holder.describe()


@dataclass
class DataWatch:
    """The change detector, without Prefect: :meth:`poll` says when to start a run, :meth:`started` that one was.

    ``owned``: raw folders the data stage writes itself (the DICOM sources' ingest output), not watched.
    ``lock_file``: the workspace lock; while it names a live holder no run starts and data.dvc follows it."""

    intake: Path
    raw: Path
    owned: tuple[Path, ...]
    dvc_file: Path
    lock_file: Path
    quiet_s: float = QUIET_S
    echo: Callable[[str], None] = print
    base: Snapshot = field(init=False)
    _last: tuple[Files, Files, str | None] | None = field(default=None, init=False)
    _moved_at: float = field(default=0.0, init=False)
    _digests: dict[tuple[str, Stat], bytes] = field(default_factory=dict, init=False)
    _told_busy: bool = field(default=False, init=False)

    def look(self) -> Snapshot:
        return Snapshot(scan(self.intake), scan(self.raw, self._skip), dvc_hash(self.dvc_file))

    def baseline(self) -> Snapshot:
        """Take the data as it is now as the baseline (nothing runs for it) and return it."""
        self._rebase(self.look())
        return self.base

    def poll(self, now: float, *, running: bool) -> Change | None:
        """One look: the change to start a run for, or None (nothing new, still moving, or the workspace busy).
        ``running``: a run this watcher started has not ended yet."""
        snap = self.look()
        key = (snap.intake, snap.raw, snap.dvc)
        if key != self._last:
            self._last, self._moved_at = key, now
        holder = workspace_holder(self.lock_file)
        if running or holder is not None:
            self.base = Snapshot(self.base.intake, self.base.raw, snap.dvc)  # a writer's own dvc commit
            if holder is not None and not running and not self._told_busy and self._files_differ(snap):
                self.echo(f"watch: new data while the workspace is held by {holder}; the retrain waits for it")
                self._told_busy = True
            return None
        self._told_busy = False
        if now - self._moved_at < self.quiet_s:
            return None
        change = self._diff(snap)
        if not change:
            self._rebase(snap)  # stat-only changes (a re-link): remember the new stats, hash nothing again
        return change or None

    def started(self) -> None:
        """A run was started for the last look: it becomes the baseline of the next change."""
        if self._last is not None:
            self._rebase(Snapshot(*self._last))

    # -- internals --------------------------------------------------------------------------------------------

    def _skip(self, path: Path) -> bool:
        for folder in self.owned:
            if path == folder:
                return True
            # the ingest's temporary siblings (components/data/intake.py: .<name>.ingest-*, .<name>.old-*)
            siblings = (f".{folder.name}.ingest-", f".{folder.name}.old-")
            if path.parent == folder.parent and path.name.startswith(siblings):
                return True
        return False

    def _files_differ(self, snap: Snapshot) -> bool:
        """Files came, went or changed size (no content read: a re-link alone says nothing)."""
        pairs = ((self.base.intake, snap.intake), (self.base.raw, snap.raw))
        return any(a.keys() != b.keys() or any(a[k][0] != b[k][0] for k in a) for a, b in pairs)

    def _rebase(self, snap: Snapshot) -> None:
        for rel, st in snap.raw.items():  # every baseline raw file has its digest, for a later re-link to match
            self._digest(rel, st)
        keep = set(snap.raw.items())
        self._digests = {k: v for k, v in self._digests.items() if k in keep}
        self.base = snap

    def _digest(self, rel: str, st: Stat) -> bytes | None:
        if (rel, st) not in self._digests:
            try:
                with open(self.raw / rel, "rb") as fh:
                    self._digests[(rel, st)] = hashlib.file_digest(fh, "sha256").digest()
            except OSError:
                return None
        return self._digests[(rel, st)]

    def _diff(self, snap: Snapshot) -> Change:
        intake = _compare(self.base.intake, snap.intake, lambda rel, a, b: a == b)

        def same_bytes(rel: str, a: Stat, b: Stat) -> bool:
            if a == b:
                return True
            if a[0] != b[0]:
                return False
            was, now = self._digests.get((rel, a)), self._digest(rel, b)
            return was is not None and was == now

        raw = _compare(self.base.raw, snap.raw, same_bytes)
        dvc = (self.base.dvc, snap.dvc) if snap.dvc != self.base.dvc else None
        return Change(intake, raw, dvc)


def _compare(base: Files, now: Files, same: Callable[[str, Stat, Stat], bool]) -> tuple[int, int, int]:
    new = len(now.keys() - base.keys())
    removed = len(base.keys() - now.keys())
    changed = sum(1 for rel in now.keys() & base.keys() if not same(rel, base[rel], now[rel]))
    return new, changed, removed


def data_watch(ctx: Context, *, quiet_s: float, echo: Callable[[str], None]) -> DataWatch:
    """The workspace's :class:`DataWatch`: its intake and raw trees, the DICOM sources' raw folders left out."""
    from components.data.intake import intake_folders
    from pipelines.stages import RAW_DVC_FILE

    cfg = ctx.config.data
    owned = tuple(dest for _, dest in intake_folders(dict(cfg.sources), ctx.workspace, cfg.raw, cfg.intake).values())
    return DataWatch(
        intake=ctx.path(cfg.intake).resolve(),
        raw=ctx.path(cfg.raw).resolve(),
        owned=owned,
        dvc_file=ctx.workspace / RAW_DVC_FILE,
        lock_file=ctx.state.root / "lock",
        quiet_s=quiet_s,
        echo=echo,
    )


# -- Prefect: the deployment, its runner, the watch loop ----------------------------------------------------------


def serve_and_watch(
    ctx: Context,
    api_url: str,
    *,
    overrides: list[str],
    force: bool,
    cron: str | None,
    every_s: float = EVERY_S,
    quiet_s: float = QUIET_S,
    name: str = DEPLOYMENT,
    echo: Callable[[str], None],
) -> None:
    """Serve ``retrain`` as ``retrain/<name>`` (concurrency limit 1; on ``cron`` too when given) against the
    Prefect API at ``api_url`` and start a run of it for each settled data change, until interrupted."""
    os.environ["PREFECT_API_URL"] = api_url  # for the runs' subprocesses; this process gets temporary_settings
    from prefect.settings import PREFECT_API_URL, temporary_settings

    watch = data_watch(ctx, quiet_s=quiet_s, echo=echo)
    parameters: dict[str, Any] = {
        "workspace": str(ctx.workspace),
        "config": str(ctx.config_path),
        "overrides": list(overrides),
        "skip_unchanged": not force,
        "lock_wait_s": LOCK_WAIT_S,
        "started_by": "medtune watch (a retrain on new data)",
    }
    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        try:
            asyncio.run(_serve(ctx, watch, parameters, name=name, cron=cron, every_s=every_s, echo=echo))
        except KeyboardInterrupt:
            echo("stopping the watcher ...")
        except BaseExceptionGroup as group:  # from the task group: an interrupt inside a task, or the runner failed
            if group.subgroup(KeyboardInterrupt) is not None:
                echo("stopping the watcher ...")
                return
            from pipelines.schedule import ScheduleError

            leaf = _first_leaf(group)
            raise ScheduleError(f"the runner stopped: {type(leaf).__name__}: {_line(leaf)}") from None


def _first_leaf(error: BaseException) -> BaseException:
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    return error


def _line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else ""


async def _serve(
    ctx: Context,
    watch: DataWatch,
    parameters: dict[str, Any],
    *,
    name: str,
    cron: str | None,
    every_s: float,
    echo: Callable[[str], None],
) -> None:
    import anyio
    from prefect.deployments.runner import EntrypointType
    from prefect.runner import Runner

    from pipelines.schedule import scheduled_retrain

    runner = Runner(name=name, query_seconds=max(1.0, min(every_s, 10.0)), pause_on_shutdown=True)
    loop = asyncio.get_running_loop()
    watching = anyio.CancelScope()

    def on_signal(*_: Any) -> None:  # Ctrl-C or SIGTERM: leave the watch loop, then stop the runner (below)
        loop.call_soon_threadsafe(watching.cancel)

    # Runner.start installs its handle_sigterm for SIGTERM (Prefect 3.7's stops the runner and exits at once).
    runner.handle_sigterm = on_signal  # type: ignore[method-assign]
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    deployment_id = await runner.aadd_flow(
        scheduled_retrain,
        name=name,
        cron=cron,
        concurrency_limit=1,
        parameters=parameters,
        tags=["medtune", "watched"],
        description="medtune retrain on new data (medtune watch)",
        entrypoint_type=EntrypointType.MODULE_PATH,
    )
    base = await anyio.to_thread.run_sync(watch.baseline)
    cfg = ctx.config.data
    on_cron = f" and on cron '{cron}' (UTC)" if cron else ""
    echo(
        f"watching {cfg.intake}, {cfg.raw} and data.dvc every {every_s:g} s (a change settles after "
        f"{watch.quiet_s:g} s quiet): {len(base.intake)} intake and {len(base.raw)} raw files as they are now; "
        f"retrain/{name} runs on new data{on_cron}; Ctrl-C stops"
    )
    try:
        async with anyio.create_task_group() as group:
            group.start_soon(runner.start)
            with watching:
                await _watch_loop(watch, deployment_id, every_s=every_s, echo=echo, intake=cfg.intake, raw=cfg.raw)
            echo("stopping the watcher ...")
            # The runner's own stop: a run in flight is cancelled (SIGTERM with Prefect's cancel intent), then its
            # context closes (schedules paused, processes left killed). Cancelling its task instead would cancel
            # that clean-up too.
            with anyio.move_on_after(30):
                while not runner.started:
                    await anyio.sleep(0.1)
            if runner.started:
                await runner.astop()
            else:
                group.cancel_scope.cancel()
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, _interrupt)


async def _watch_loop(
    watch: DataWatch, deployment_id: Any, *, every_s: float, echo: Callable[[str], None], intake: str, raw: str
) -> None:
    import anyio
    from prefect.client.orchestration import get_client
    from prefect.deployments.flow_runs import arun_deployment  # run_deployment's async twin

    active: Any = None  # the flow run this watcher started last, until it ends
    failing = False
    async with get_client() as client:
        while True:
            try:
                if active is not None:
                    run = await client.read_flow_run(active.id)
                    if run.state is not None and run.state.is_final():
                        why = (run.state.message or "").strip().split("\n")[0][:200]
                        echo(f"watch: retrain run '{run.name}' ended {run.state.name}" + (f" ({why})" if why else ""))
                        active = None
                look = partial(watch.poll, time.monotonic(), running=active is not None)
                change = await anyio.to_thread.run_sync(look)
                if change:
                    active = await arun_deployment(
                        deployment_id, timeout=0, as_subflow=False, tags=["medtune", "data-change"], client=client
                    )
                    watch.started()
                    echo(
                        f"watch: new data ({change.describe(intake, raw)}) -> retrain run '{active.name}' ({active.id})"
                    )
                failing = False
            except Exception as e:  # the API went away a moment (a busy server): say so once, look again
                if not failing:
                    echo(f"watch: {type(e).__name__}: {_line(e)}; retrying")
                failing = True
            await anyio.sleep(every_s)


def _interrupt(*_: Any) -> None:
    raise KeyboardInterrupt


def stop_on_sigterm() -> None:
    """SIGTERM from here on takes Ctrl-C's path (KeyboardInterrupt), so the server is stopped whenever it comes."""
    signal.signal(signal.SIGTERM, _interrupt)
