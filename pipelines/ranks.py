"""Several processes from one command (issue 20, item 2): ``medtune run`` and ``medtune train`` under ``torchrun
--nproc_per_node N``, or with ``--nproc N`` (which starts torchrun itself, :mod:`torch.distributed.run`, with the
same arguments), and ``train.distributed: ddp | fsdp``::

    medtune run --nproc 2 -c configs/smoke.yaml train.distributed=ddp
    torchrun --nproc_per_node 2 -m pipelines.cli run -c configs/smoke.yaml train.distributed=fsdp

**Rank 0 is the command** as one process runs it: it holds the workspace lock, runs the Prefect flow and alone
talks to MLflow, the registry, DVC and Prefect; evaluation and the safety benchmark run there, once. **Ranks
1..N-1 follow**: they run no flow. The stages whose compute is collective (the base bootstrap and the training
recipe: DDP's all-reduces, FSDP's gathers) go through :func:`lockstep`: rank 0 announces the call (the component
function and its plain arguments) in a file of this launch's control folder, then runs it; every follower runs
the same call with the same arguments and no callbacks (metrics and progress are rank 0's), so all ranks enter
the same collectives in the same order. The rank search and everything else run on rank 0 alone while the
followers wait. The data are rank 0's: a follower reads the dataset rank 0 built, at the path the call names (one
machine, or a filesystem the machines share).

**Every wait is bounded.** Collectives time out after ``train.rank_timeout_s`` (the process group's timeout); a
follower waits at most that long for rank 0's next announcement. When rank 0's command ends, finished or failed, it
announces the end: a follower exits 0, or 1 with one line giving rank 0's reason. A follower that fails exits 1
with one line; rank 0's collective then fails at once (the peer closed its connection), the stage fails with one
line, and torchrun stops the other processes.

Why a control folder rather than a collective: between two training stages rank 0 may work alone for long
(the data build, the rank search, evaluation, the safety benchmark); a follower blocked in a collective could not
be told that rank 0 failed there, while a file is written at once and read by polling with a deadline.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import pickle
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from components.config import ConfigError

if TYPE_CHECKING:  # torch loads when several processes start, not when a command imports the stages
    from components.training.distributed import DistEnv

CONTROL = "ranks"  # <state>/ranks/<launch token>/: call-0001.pkl, call-0002.pkl, ..., end.pkl, ack-<rank>
POLL_S = 0.1
#: How long rank 0 waits, after announcing the end, for each follower to say it read it: its line then reaches the
#: console before torchrun, seeing rank 0 exit, stops the rest.
ACK_WAIT_S = 10.0

_LEADER: Leader | None = None


class Leader:
    """Rank 0's side: announces each collective call and the end of the command to the followers."""

    def __init__(self, env: DistEnv, folder: Path) -> None:
        self.env, self.folder, self.calls = env, folder, 0

    def announce(self, fn: Callable[..., Any], kwargs: Mapping[str, Any]) -> None:
        self.calls += 1
        _write(
            self.folder / f"call-{self.calls:04d}.pkl", {"fn": f"{fn.__module__}:{fn.__qualname__}", "kwargs": kwargs}
        )

    def end(self, error: str | None, wait_s: float = ACK_WAIT_S) -> None:
        """Announce the end (``error`` None: rank 0 finished) and wait up to ``wait_s`` for the followers' acks."""
        _write(self.folder / "end.pkl", {"error": error})
        deadline = time.monotonic() + wait_s
        acks = [self.folder / f"ack-{r}" for r in range(1, self.env.world)]
        while not all(a.exists() for a in acks) and time.monotonic() < deadline:
            time.sleep(POLL_S)


def _write(path: Path, message: Mapping[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(pickle.dumps(dict(message)))
    os.replace(tmp, path)  # a follower sees the whole message or none


def check_config(strategy: str, world: int, *, nproc: int | None = None, quantize: str = "none") -> None:
    """Several processes need ``train.distributed`` ddp or fsdp, and FSDP a base that is not 4-/8-bit
    (ConfigError naming the key, else)."""
    how = f"--nproc {nproc}" if nproc else f"torchrun ({world} processes)"
    if world > 1 and strategy == "none":
        raise ConfigError(f"train.distributed: 'none' under {how}: set train.distributed=ddp or fsdp")
    if world > 1 and strategy == "fsdp" and quantize != "none":
        raise ConfigError(
            f"model.quantize: {quantize} with train.distributed=fsdp under {how}: FSDP cannot shard bitsandbytes' "
            "packed weights; use train.distributed=ddp (each rank holds the quantized base)"
        )


def lockstep(stage: str, fn: Callable[..., Any], kwargs: Mapping[str, Any], **callbacks: Any) -> Any:
    """``fn(**kwargs, **callbacks)``; with several processes, announced to the followers first and run with this
    rank's ``env`` (see the module docstring). ``kwargs`` must be plain values (pickled); ``callbacks`` stay here.
    A failure with several processes becomes a StageFailed of ``stage`` (one line: a collective's error names no
    stage, and the other ranks' own lines say the rest)."""
    leader = _LEADER
    if leader is None:
        return fn(**kwargs, **callbacks)
    from pipelines.stages import StageFailed

    leader.announce(fn, kwargs)
    try:
        return fn(**kwargs, **callbacks, env=leader.env)
    except Exception as e:
        first = (str(e).strip().splitlines() or [""])[0]
        raise StageFailed(stage, f"rank 0 of {leader.env.world}: {type(e).__name__}: {first}") from e


@contextlib.contextmanager
def ranks(ctx: Any, echo: Callable[[str], None]) -> Iterator[None]:
    """The command's body runs inside on rank 0 (the leader); a follower never enters it: it follows rank 0's calls
    and leaves the process with its exit code (0 when rank 0 finished). One process: the body, nothing else."""
    global _LEADER
    t = ctx.config.train
    world = int(os.environ.get("WORLD_SIZE", "1"))
    check_config(t.distributed, world, quantize=getattr(ctx.config.model, "quantize", "none"))
    if world <= 1:
        if t.distributed != "none":
            echo(f"train.distributed={t.distributed} in one process: it trains as one (--nproc N starts several)")
        yield
        return
    from components.training.distributed import all_gather_objects, init_distributed
    from pipelines.context import apply_threads

    env = init_distributed(t.device, timeout_s=t.rank_timeout_s, strategy=t.distributed)
    root = ctx.state.root / CONTROL
    token = None
    if env.is_main:  # under the workspace lock: no other launch uses this folder
        shutil.rmtree(root, ignore_errors=True)
        token = uuid.uuid4().hex[:12]
        (root / token).mkdir(parents=True)
    folder = root / str(all_gather_objects(token, env)[0])  # every rank: rank 0's launch folder
    if not env.is_main:
        apply_threads(ctx)
        _quiet()
        code = follow(env, folder, timeout_s=t.rank_timeout_s)
        _close(env)
        raise SystemExit(code)  # out of the command before its body: a follower runs none of it
    leader = Leader(env, folder)
    _LEADER = leader
    echo(f"ranks: {env.world} processes, train.distributed={t.distributed}; rank 0 runs the flow")
    error: str | None = "rank 0 stopped"
    try:
        yield
        error = None
    except BaseException as e:
        code = getattr(e, "exit_code", getattr(e, "code", 1))
        error = None if code == 0 else f"rank 0 failed (exit {code}); its message is above"
        raise
    finally:
        _LEADER = None
        leader.end(error)
        _close(env)


def _close(env: DistEnv) -> None:
    """Leave the process group without a barrier (after a failure a barrier would wait for a rank that is gone)."""
    import torch.distributed as dist

    if dist.is_initialized():
        with contextlib.suppress(Exception):
            dist.destroy_process_group()


def follow(env: DistEnv, folder: Path, *, timeout_s: float) -> int:
    """A follower's loop: run each call rank 0 announces in ``folder`` until it announces the end; returns the exit
    code (0: rank 0 finished; 1: rank 0 failed, this rank failed, or rank 0 stayed silent for ``timeout_s``)."""
    done = 0
    waited_since = time.monotonic()
    while True:
        call, end = folder / f"call-{done + 1:04d}.pkl", folder / "end.pkl"
        if call.is_file():
            message = pickle.loads(call.read_bytes())
            module, _, name = message["fn"].partition(":")
            try:
                fn = getattr(importlib.import_module(module), name)
                fn(**message["kwargs"], env=env)
            except Exception as e:
                first = (str(e).strip().splitlines() or [""])[0]
                _say(f"rank {env.rank}: {name} failed: {type(e).__name__}: {first}")
                return 1
            done += 1
            waited_since = time.monotonic()
        elif end.is_file():
            error = pickle.loads(end.read_bytes()).get("error")
            if error:
                _say(f"rank {env.rank}: stopped: {error}")
            (folder / f"ack-{env.rank}").touch()
            return 1 if error else 0
        elif time.monotonic() - waited_since > timeout_s:
            _say(f"rank {env.rank}: no word from rank 0 for {timeout_s:g} s (train.rank_timeout_s): giving up")
            return 1
        else:
            time.sleep(POLL_S)


def _quiet() -> None:
    """A follower's console: its own failure line only. The same code warns on rank 0, which shows it once."""
    import warnings

    warnings.simplefilter("ignore")
    with contextlib.suppress(ImportError):
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def launch(command: str, nproc: int, argv: list[str]) -> int:
    """Start ``nproc`` processes of ``medtune <command> <argv>`` on this machine with torch.distributed.run (what
    ``torchrun --standalone --nproc_per_node nproc -m pipelines.cli ...`` does); returns the exit code: 0, or the
    code of the first rank that failed (rank 0's when it failed)."""
    import logging

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    from components.runtime import usable_cpus

    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, usable_cpus() // nproc)))
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)  # the ranks' own lines say why
    args = get_args_parser().parse_args(
        ["--standalone", "--nnodes", "1", "--nproc_per_node", str(nproc), "--module", "pipelines.cli", command, *argv]
    )
    try:
        run(args)
    except ChildFailedError as e:
        failures = e.failures
        first = failures.get(0) or failures[min(failures)]
        return first.exitcode if first.exitcode and first.exitcode > 0 else 1
    return 0


def strip_nproc(argv: list[str]) -> list[str]:
    """The command line without ``--nproc N`` / ``--nproc=N`` (what every rank gets)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            out.append(arg)
    return out
