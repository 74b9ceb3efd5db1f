"""Where medtune keeps its state, and the process environment every command runs in.

One state folder (``.medtune/`` in the workspace, or ``$MEDTUNE_HOME``) holds Prefect's home (its temporary
server's SQLite database), MLflow's SQLite store and artifacts, the DVC local remote and DVC's site cache, so
nothing is written to the user's home and one ``rm -r .medtune`` resets everything.

:func:`configure_environment` must run before ``prefect``, ``mlflow``, ``dvc`` or ``flwr`` are imported: they
read their settings (and decide on telemetry) at import time. A value the user set explicitly always wins.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

#: Telemetry and update checks, off unless the user says otherwise (values as each library parses them:
#: mlflow accepts DO_NOT_TRACK only as "true").
TELEMETRY_OFF = {
    "DO_NOT_TRACK": "true",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DVC_NO_ANALYTICS": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "GIT_TERMINAL_PROMPT": "0",
}

WORKSPACE_MARKERS = ("dvc.yaml", "configs")
#: Prefect server services a one-run temporary server does not need (events and task-run records stay on).
EPHEMERAL_ONLY_OFF = tuple(
    f"PREFECT_SERVER_SERVICES_{name}_ENABLED"
    for name in ("SCHEDULER", "LATE_RUNS", "FOREMAN", "CANCELLATION_CLEANUP", "PAUSE_EXPIRATIONS", "REPOSSESSOR",
                 "TRIGGERS")
)  # fmt: skip

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")


class WorkspaceError(Exception):
    """No medtune workspace where one is needed."""


@dataclass(frozen=True)
class StatePaths:
    """Every folder medtune writes outside the dataset, under one root."""

    root: Path

    @property
    def prefect_home(self) -> Path:
        return self.root / "prefect"

    @property
    def mlflow_dir(self) -> Path:
        return self.root / "mlflow"

    @property
    def mlflow_uri(self) -> str:
        return f"sqlite:///{(self.mlflow_dir / 'mlflow.db').resolve()}"

    @property
    def mlflow_artifacts(self) -> Path:
        return self.mlflow_dir / "artifacts"

    @property
    def dvc_remote(self) -> Path:
        return self.root / "dvc-remote"

    @property
    def dvc_site_cache(self) -> Path:
        return self.root / "dvc-site-cache"

    @property
    def secrets(self) -> Path:
        return self.root / "secrets"

    @property
    def runs(self) -> Path:
        """Scratch space of single runs (reports before they go to MLflow)."""
        return self.root / "runs"

    def make(self) -> StatePaths:
        for d in (self.root, self.prefect_home, self.mlflow_dir, self.mlflow_artifacts, self.dvc_remote, self.runs):
            d.mkdir(parents=True, exist_ok=True)
        return self


def find_workspace(start: Path | None = None) -> Path:
    """The workspace root: ``$MEDTUNE_WORKSPACE``, else the nearest folder at or above ``start`` holding
    ``dvc.yaml`` and ``configs/``."""
    env = os.environ.get("MEDTUNE_WORKSPACE")
    if env:
        root = Path(env).resolve()
        if not all((root / m).exists() for m in WORKSPACE_MARKERS):
            raise WorkspaceError(f"MEDTUNE_WORKSPACE={env} is not a medtune workspace (needs dvc.yaml and configs/)")
        return root
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if all((folder / m).exists() for m in WORKSPACE_MARKERS):
            return folder
    raise WorkspaceError(
        f"{here} is not inside a medtune workspace (no dvc.yaml and configs/ found above it); "
        "run `medtune init DIR` to create one, or cd into the medtune checkout"
    )


def state_paths(workspace: Path) -> StatePaths:
    env = os.environ.get("MEDTUNE_HOME")
    return StatePaths(Path(env).resolve() if env else workspace / ".medtune")


def configure_environment(state: StatePaths) -> None:
    """Set telemetry switches and tool homes for this process and its children; explicit settings win."""
    for key, value in TELEMETRY_OFF.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("PREFECT_HOME", str(state.prefect_home))
    # Prefect derives these from "home" only inside its root settings; the server's memo store, the results' local
    # storage and the logging config of the sub-settings default to ~/.prefect (issue 17: nothing outside the
    # workspace and its state folder)
    home = Path(os.environ["PREFECT_HOME"])
    os.environ.setdefault("PREFECT_SERVER_MEMO_STORE_PATH", str(home / "memo_store.toml"))
    os.environ.setdefault("PREFECT_RESULTS_LOCAL_STORAGE_PATH", str(home / "storage"))
    os.environ.setdefault("PREFECT_LOGGING_CONFIG_PATH", str(home / "logging.yml"))
    os.environ.setdefault("DVC_SITE_CACHE_DIR", str(state.dvc_site_cache))
    os.environ.setdefault("FLWR_HOME", str(state.root / "flwr"))
    os.environ.setdefault("MPLCONFIGDIR", str(state.root / "matplotlib"))
    # onnxruntime (the burned-in text detector) keeps a device id under $XDG_CACHE_HOME/Microsoft/DeveloperTools,
    # else ~/.cache: into the state folder with every other XDG-minded library's cache
    os.environ.setdefault("XDG_CACHE_HOME", str(state.root / "cache"))
    os.environ.setdefault("MPLBACKEND", "Agg")
    # The temporary Prefect server needs a few seconds on a cold 2-core machine; 20 s is tight under load.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    # The temporary server lives for one flow run: its loop services (scheduling, late runs, the foreman, triggers
    # ...) only poll its SQLite database, ~10% of a core for the whole run beside the training (issue 17). The
    # server `medtune schedule` starts runs them (pipelines/schedule.py: EPHEMERAL_ONLY_OFF).
    for key in EPHEMERAL_ONLY_OFF:
        os.environ.setdefault(key, "false")
    # transformers' notices (a processor's "falling back to the PIL backend" without torchvision, weight-loading
    # bars) are not the user's to act on; errors still print. peft reads a deprecated transformers attribute on
    # every adapter it wraps: its FutureWarning says nothing about medtune's use.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # weight-loading bars: medtune shows its own progress
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # Issue 17, the stall under load: torch's CPU build runs on GNU OpenMP, whose threads spin 300,000 times (a
    # whole time slice) at every barrier before they sleep. Beside other 2-thread processes on 2 cores a spinning
    # thread burns the slice its partner needs, so each step slows super-linearly: a tiny Llama step (hidden 128 x
    # 4 layers, batch 16 x 50, AdamW, 2 threads, every process alike) took 272 ms quiet, 3.9 s beside one such
    # process, 14.7 s beside four (54x; fair share 5x). A short spin keeps the quiet speed and removes the stall:
    # GOMP_SPINCOUNT=1000 381 ms beside four (1.3x fair share), 228 ms beside two (1.3x); the real base step quiet
    # 69 ms (default spin 66-79 ms). OMP_WAIT_POLICY=PASSIVE is better under load (337 ms beside four, 146 beside
    # two) but 1.4-1.6x slower quiet (106 ms). Must be set before torch loads libgomp (nothing in the CLI's import
    # chain does); an explicit OMP_WAIT_POLICY or GOMP_SPINCOUNT wins. benchmarks/contention.py measures it.
    if "OMP_WAIT_POLICY" not in os.environ:
        os.environ.setdefault("GOMP_SPINCOUNT", "1000")
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
    # peft imports bitsandbytes wherever it is installed (the test extra carries it); on an AVX-512 CPU its import
    # logs "Failed to load CPU gemm_4bit_forward from kernels-community" (an optional kernel fetched from the Hugging
    # Face hub, which medtune never reaches) on every command's console. Its errors still show.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)


# -- CPUs and threads (issue 17, item 2) --------------------------------------------------------------------------


def cgroup_cpu_limit(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> float | None:
    """The CPU quota of this process's cgroup in CPUs (``1.5`` for 150 ms per 100 ms), or None when unlimited or
    unreadable. cgroup v2: ``cpu.max`` ("max 100000" or "200000 100000"); v1: ``cpu.cfs_quota_us`` (-1: none) over
    ``cpu.cfs_period_us``. Every level from the process's own cgroup (``proc_cgroup``) up to ``root`` is read and
    the tightest quota wins: a parent's quota binds its children too."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        lines = []
    limits = []
    for line in lines or ["0::/"]:
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        names = set(controllers.split(","))
        if controllers == "":  # v2's unified hierarchy
            folders = [root]
        elif "cpu" in names:  # v1's cpu controller, mounted as cpu/ or cpu,cpuacct/
            folders = [root / "cpu", root / controllers]
        else:
            continue
        for base in folders:
            relative = Path(path.strip() or "/").relative_to("/")
            for level in (base / relative, *(base / relative).parents):
                limits.append(_quota(level, v2=controllers == ""))
                if level == base:
                    break
    found = [x for x in limits if x is not None]
    return min(found) if found else None


def _quota(folder: Path, *, v2: bool) -> float | None:
    try:
        if v2:
            quota, _, period = (folder / "cpu.max").read_text().strip().partition(" ")
        else:
            quota = (folder / "cpu.cfs_quota_us").read_text().strip()
            period = (folder / "cpu.cfs_period_us").read_text().strip()
        if quota in ("max", "-1") or not period:
            return None
        value = int(quota) / int(period)
    except (OSError, ValueError, ZeroDivisionError):
        return None
    return value if value > 0 else None


def usable_cpus(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP, affinity: set[int] | None = None) -> int:
    """The CPUs this process may really use: min(CPUs in its affinity mask, ceil(cgroup quota)), at least 1.
    ``os.cpu_count()`` counts the machine's CPUs, which a container's quota or ``taskset`` can cut far below."""
    if affinity is None:
        try:
            affinity = os.sched_getaffinity(0)
        except (AttributeError, OSError):  # not Linux
            affinity = set(range(os.cpu_count() or 1))
    cpus = max(1, len(affinity))
    limit = cgroup_cpu_limit(root, proc_cgroup)
    return max(1, min(cpus, math.ceil(limit))) if limit is not None else cpus


def apply_threads(threads: int | None = None) -> int:
    """Size torch's thread pools for this command: ``threads`` (the ``train.threads`` key), or None for
    :func:`usable_cpus`. Returns the figure. With None, and where the process may use every CPU of the machine,
    a :class:`ThreadGovernor` also starts: the long stages lower the count while other processes want the CPUs
    (``MEDTUNE_ADAPT_THREADS=0``: not, for a side-by-side measurement). Intra-op threads can change at any time;
    inter-op threads only once and before any inter-op work, so that is tried and skipped when torch refuses (a
    second command in one process, a test run)."""
    import torch

    global _GOVERNOR
    count = threads if threads is not None else usable_cpus()
    torch.set_num_threads(count)
    if _GOVERNOR is not None:  # a second command in one process (tests): the new setting decides
        _GOVERNOR.close()
        _GOVERNOR = None
    if threads is None and count == (os.cpu_count() or count) and os.environ.get("MEDTUNE_ADAPT_THREADS", "1") != "0":
        _GOVERNOR = ThreadGovernor(count)
    # torch refuses a second setting, or one after inter-op work started ("cannot set number of interop threads")
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(count)
    return count


# -- Threads under load (issue 17, item 2: steady beside other pipelines) ---------------------------------------------

PROC_LOADAVG = Path("/proc/loadavg")
PROC_SELF_TASKS = Path("/proc/self/task")


def runnable_threads() -> tuple[int, int] | None:
    """``(machine, own)``: the threads runnable right now (running or waiting for a CPU) on the whole machine
    (``/proc/loadavg``'s fourth field) and in this process (state ``R`` in ``/proc/self/task/*/stat``); None where
    either cannot be read (not Linux). Both are read within microseconds of each other, so ``machine - own`` is the
    competition other processes bring, whatever this process is doing at that moment."""
    try:
        machine = int(PROC_LOADAVG.read_text().split()[3].split("/")[0])
        own = 0
        for task in os.scandir(PROC_SELF_TASKS):
            with contextlib.suppress(OSError):  # a thread that ended between the listing and the read
                stat = Path(task.path, "stat").read_text()
                own += stat[stat.rindex(")") + 2] == "R"  # the state follows the parenthesised name
    except (OSError, ValueError, IndexError):
        return None
    return machine, own


class ThreadGovernor:
    """Fewer torch threads while other processes want the CPUs, back to the full count when they are gone.

    Why: a process that runs ``n`` OpenMP threads meets a barrier in every parallel region, where each thread waits
    for the slowest. On an oversubscribed machine one of them is often descheduled, and its partners wait a whole
    time slice: beside four other 2-thread medtune pipelines on 2 CPUs, the base step averaged 1.70x its fair share
    with 2-5 s outliers (benchmarks/README.md, "Contention"). One thread has no barrier to wait at, and the machine
    does the same work with fewer context switches; on an idle machine the full count is faster, so the governor
    follows the load.

    How: a sampler thread reads :func:`runnable_threads` every ``sample_every`` seconds and keeps ``others`` = the
    machine's runnable threads minus this process's. The training thread calls the governor between steps (the
    progress callback of every long stage does); every ``window`` seconds it takes the mean of ``others`` over the
    window, the CPUs left ``free = cpus - others``, and changes the count with hysteresis: down to
    ``max(1, ceil(free - 0.5))`` when ``free < threads - 0.5``, up to ``min(ceiling, floor(free + 0.35))`` when
    ``free >= threads + 0.65``. On 2 CPUs: 2 threads while under 0.5 other runnable threads on average, 1 above
    that, back to 2 under 0.35. The change is applied with ``torch.set_num_threads`` on the calling thread (OpenMP's
    thread count belongs to the thread that sets it), so call it from the thread that trains.

    It runs only where the machine's count describes this process's CPUs: when ``train.threads`` is null (a number
    is kept as given, which also keeps a resumed run bit-identical to an uninterrupted one) and when the process may
    use every CPU of the machine (no affinity mask or cgroup quota below it: then ``/proc/loadavg`` counts threads
    on CPUs this process never gets). ``sampler`` and ``clock`` are injectable for tests (no thread is started
    when a ``sampler`` is given; call :meth:`sample`).
    """

    def __init__(
        self,
        ceiling: int,
        *,
        cpus: int | None = None,
        window: float = 5.0,
        sample_every: float = 0.25,
        sampler: Callable[[], tuple[int, int] | None] | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        import threading
        import time

        self.ceiling = max(1, ceiling)
        self.cpus = cpus if cpus is not None else usable_cpus()
        self.window, self.sample_every = window, sample_every
        self.threads = self.ceiling
        self._clock = clock or time.monotonic
        self._read = sampler or runnable_threads
        self._samples: list[float] = []
        self._lock = threading.Lock()
        self._decided = self._clock()
        self._applied: dict[int, int] = {}
        self.changes: list[tuple[float, int, float]] = []  # (clock, threads, mean others): what a report may show
        self._thread: threading.Thread | None = None
        if sampler is None:
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._run, name="medtune-thread-governor", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.sample_every):
            self.sample()

    def sample(self) -> None:
        reading = self._read()
        if reading is not None:
            with self._lock:
                self._samples.append(max(0.0, float(reading[0] - reading[1])))

    def close(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=2)

    def decide(self) -> str | None:
        """At most once per window: the new thread count from the window's samples; returns a line saying why when
        the count changes, else None. Applies nothing (see :meth:`__call__`)."""
        now = self._clock()
        if now - self._decided < self.window:
            return None
        with self._lock:
            samples, self._samples = self._samples, []
        self._decided = now
        if len(samples) < 3:
            return None
        others = sum(samples) / len(samples)
        free = self.cpus - others
        current = self.threads
        if free < current - 0.5:
            new = max(1, math.ceil(free - 0.5))
        elif free >= current + 0.65:
            new = min(self.ceiling, math.floor(free + 0.35))
        else:
            return None
        if new == current:
            return None
        self.threads = new
        self.changes.append((now, new, others))
        noun = "thread" if new == 1 else "threads"
        why = "the machine is busy" if new < current else "the machine is free again"
        return f"{new} torch {noun} ({why}: {others:.1f} other runnable threads on {self.cpus} CPUs)"

    def __call__(self) -> str | None:
        """Between two steps, on the training thread: decide, and make this thread's count the decided one."""
        import threading

        import torch

        note = self.decide()
        ident = threading.get_ident()
        if self._applied.get(ident) != self.threads:
            torch.set_num_threads(self.threads)
            self._applied[ident] = self.threads
        return note


_GOVERNOR: ThreadGovernor | None = None


def thread_governor() -> ThreadGovernor | None:
    """This process's governor (:func:`apply_threads` starts it when the count is adaptive), or None."""
    return _GOVERNOR
