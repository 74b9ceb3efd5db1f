"""Flower's SuperLink and SuperNode started from this interpreter, whatever PATH holds (issue 22).

    python -m components.federated.launch superlink --port 9092 --ssl-ca-certfile ca.crt ...
    python -m components.federated.launch supernode --superlink host:9092 --root-certificates ca.crt ...
    medtune-superlink ... / medtune-supernode ...        # the same, as installed commands

Flower 1.42's ``flower-superlink`` and ``flower-supernode`` start their helpers (``flower-superexec``, which starts
``flwr-serverapp`` / ``flwr-clientapp``) by bare name, so with the venv not on PATH (a systemd unit, cron, a
container's entry point calling ``/opt/venv/bin/flower-superlink``) the SuperLink stops at start-up with
``FileNotFoundError: 'flower-superexec'``. These entry points put the interpreter's own ``bin`` folder first on
PATH, then run Flower's own command with the remaining arguments.
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


def run(command: str, args: Sequence[str]) -> None:
    put_interpreter_bin_first()
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
