"""Flower's SuperLink and SuperNode started from this interpreter, whatever PATH holds (issue 22).

    python -m components.federated.launch superlink --port 9092 --ssl-ca-certfile ca.crt ...
    python -m components.federated.launch supernode --superlink host:9092 --root-certificates ca.crt ...
    medtune-superlink ... / medtune-supernode ...        # the same, as installed commands

Flower 1.42's ``flower-superlink`` and ``flower-supernode`` start their helpers (``flower-superexec``, which starts
``flwr-serverapp`` / ``flwr-clientapp``) by bare name, so with the venv not on PATH (a systemd unit, cron, a
container's entry point calling ``/opt/venv/bin/flower-superlink``) the SuperLink stops at start-up with
``FileNotFoundError: 'flower-superexec'``. These entry points put the interpreter's own ``bin`` folder first on
PATH, then run Flower's own command with the remaining arguments.

``supernode --warm`` (issue 22, item 5) also keeps the ClientApp in one process for all rounds, so the site's
records and the base model load once per SuperNode, not once per message: :mod:`components.federated.warm`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

COMMANDS = ("superlink", "supernode")


def put_interpreter_bin_first() -> str:
    """Prepend the folder holding this interpreter (a venv's ``bin``) to PATH; returns it."""
    here = str(Path(sys.executable).parent)
    parts = os.environ.get("PATH", "").split(os.pathsep)
    if not parts or parts[0] != here:
        os.environ["PATH"] = os.pathsep.join([here, *[p for p in parts if p and p != here]])
    return here


def _flower(command: str) -> Callable[[], int | None]:
    if command == "superlink":
        from flwr.superlink.cli import flower_superlink

        return flower_superlink
    from flwr.supernode.cli import flower_supernode

    return flower_supernode


def _option(args: Sequence[str], name: str) -> str | None:
    """The value of ``--name VALUE`` or ``--name=VALUE`` in ``args`` (the last one), else None."""
    value = None
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(name + "="):
            value = arg.split("=", 1)[1]
    return value


def start_warm_worker(args: list[str]) -> list[str]:
    """``supernode --warm``: the SuperNode's arguments with ``--isolation process``, after starting medtune's warm
    ClientApp worker (:mod:`components.federated.warm`) on its Runtime API (``--port``, default Flower's 9094)."""
    import subprocess

    args = [a for a in args if a != "--warm"]
    if (_option(args, "--isolation") or "process") != "process":
        raise SystemExit("--warm runs the ClientApp in medtune's worker: it cannot be combined with --isolation "
                         "subprocess")  # fmt: skip
    if _option(args, "--ssl-certfile"):
        raise SystemExit("--warm: the worker reaches the Runtime API on loopback in the clear; drop --ssl-certfile")
    port = _option(args, "--port") or "9094"
    subprocess.Popen([sys.executable, "-m", "components.federated.warm", "--runtime-api-address",
                      f"127.0.0.1:{port}", "--parent-pid", str(os.getpid())])  # fmt: skip
    return [*args, "--isolation", "process"] if _option(args, "--isolation") is None else args


def run(command: str, args: Sequence[str]) -> None:
    put_interpreter_bin_first()
    args = list(args)
    if command == "supernode" and "--warm" in args:
        args = start_warm_worker(args)
    sys.argv = [f"flower-{command}", *args]
    sys.exit(_flower(command)())


def superlink() -> None:
    run("superlink", sys.argv[1:])


def supernode() -> None:
    run("supernode", sys.argv[1:])


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in COMMANDS:
        print(f"usage: python -m components.federated.launch {{{'|'.join(COMMANDS)}}} [Flower's options]",
              file=sys.stderr)  # fmt: skip
        raise SystemExit(2)
    run(args[0], args[1:])


if __name__ == "__main__":
    main()
