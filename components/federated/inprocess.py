"""Every site in this process, one after another, with no transport: the same :class:`FederatedServer` and
:func:`local_round` as the Flower apps, for benchmarks and tests that measure the method rather than the wire.

    server = run_in_process(settings, tasks, on_round=print)
    server.history[-1].summary(), server.final_deltas()

Bytes are counted as the Flower apps count them (array payload bytes each way); wall time per round is the sum
of the sites' local work, since they run one after another here.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np

from components.federated.client import local_round
from components.federated.server import FederatedServer, Reply, RoundRecord
from components.federated.settings import FedSettings
from components.federated.tasks import FedTask, shapes


def run_in_process(
    settings: FedSettings,
    tasks: Sequence[FedTask],
    *,
    shape_task: FedTask | None = None,
    on_round: Callable[[RoundRecord, FederatedServer], None] | None = None,
    noise: np.random.Generator | None = None,
) -> FederatedServer:
    """Run all rounds of ``settings`` over ``tasks`` (one per site); returns the finished server. ``noise``: the
    DP noise's generator (default: OS entropy, as in a real run; a benchmark passes a seeded one)."""
    targets, heads = shapes(shape_task or tasks[0])
    server = FederatedServer(settings, targets, heads, noise=noise)
    while not server.finished:
        started = time.perf_counter()
        down, current = server.payload(), server.round
        replies = []
        for task in tasks:
            arrays, metrics = local_round(task, settings, down, current)
            replies.append(Reply(task.site, arrays, task.num_examples(), metrics))
        record = server.aggregate(replies, seconds=time.perf_counter() - started)
        if on_round is not None:
            on_round(record, server)
    return server
