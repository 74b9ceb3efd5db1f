"""The SLoRA strategy as a Flower strategy (``flwr.serverapp.strategy.Strategy``, the Message API of flwr 1.42):
a thin translation between Flower's messages and :class:`~components.federated.server.FederatedServer`, which
holds the method (ModelBench's split: translate -> one call -> translate back).

    strategy = SLoRAStrategy(FederatedServer(settings, targets, heads))
    strategy.start(grid, strategy.arrays(), num_rounds=settings.total_rounds, timeout=settings.round_timeout)
    strategy.server.history, strategy.final_eval

Bounded waits, since a lost site must not hang a run: ``configure_train`` waits at most ``node_wait_timeout`` s
for ``min_sites`` connected SuperNodes (Flower's own node sampling waits forever), and ``start`` passes
``round_timeout`` to every ``send_and_receive``. A SuperNode that dies mid-round comes back as an error reply
(the SuperLink notices the missing heartbeat) or not at all before the timeout; either way the round averages
the sites that answered, as long as at least ``min_sites`` valid updates arrived. A node that answered an earlier
round is named by its site in the round record (Flower knows only node ids; the site name rides on each reply),
one that never answered by ``node-<id>``. Client-side evaluation of each
round's global model rides on the training message (see :func:`~components.federated.client.local_round`); one
evaluation message after the last round scores the final model at every site.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from components.federated.server import FederatedServer, Reply, RoundFailed

log = logging.getLogger("medtune.federated")

ARRAYS, METRICS, CONFIG, SITE = "arrays", "metrics", "config", "site"
NUM_EXAMPLES = "num-examples"


def to_record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord(array_dict={k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})


def from_record(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in record.items()}


def reply_content(site: str, arrays: dict[str, np.ndarray] | None, metrics: dict[str, Any], n: int) -> RecordDict:
    """What a ClientApp sends back: its deltas, numeric metrics with the example count, and its site name."""
    content: dict[str, Any] = {
        METRICS: MetricRecord({**{k: float(v) for k, v in metrics.items()}, NUM_EXAMPLES: int(n)}),
        SITE: ConfigRecord({"name": site}),
    }
    if arrays is not None:
        content[ARRAYS] = to_record(arrays)
    return RecordDict(content)


def parse_reply(msg: Message) -> Reply | str:
    """A reply's content as a :class:`Reply`, or why it cannot be read."""
    content = msg.content
    try:
        site = str(content.config_records[SITE]["name"]) if SITE in content.config_records else ""
        site = site or f"node-{msg.metadata.src_node_id}"
        metrics = dict(content.metric_records[METRICS])
        n = int(metrics.pop(NUM_EXAMPLES))  # type: ignore[arg-type]
        arrays = from_record(content.array_records[ARRAYS]) if ARRAYS in content.array_records else {}
    except (KeyError, TypeError, ValueError) as e:
        return f"unreadable reply from node {msg.metadata.src_node_id}: {e!r}"
    return Reply(site, arrays, n, {k: float(v) for k, v in metrics.items()})  # type: ignore[arg-type]


class SLoRAStrategy(Strategy):
    """Flower strategy over a :class:`FederatedServer` (SLoRA, FedAvg-LoRA or FedAvg full, per its settings)."""

    def __init__(self, server: FederatedServer):
        self.server = server
        self.settings = server.settings
        self.final_eval: dict[str, dict[str, float]] = {}
        self._sent = 0
        self._started = 0.0
        self._nodes_sent: list[int] = []
        self.site_of: dict[int, str] = {}  # Flower node id -> site name, learnt from the node's earlier replies

    def arrays(self) -> ArrayRecord:
        return to_record(self.server.payload())

    def summary(self) -> None:
        s = self.settings
        log.info(
            "%s: %d sparse + %d LoRA rounds, density %g, rank %d, min_sites %d, round timeout %gs",
            s.method, s.rounds_sparse, s.rounds_lora, s.density, s.rank, s.min_sites, s.round_timeout,
        )  # fmt: skip

    def _nodes(self, grid: Grid) -> list[int]:
        deadline = time.monotonic() + self.settings.node_wait_timeout
        while len(nodes := list(grid.get_node_ids())) < self.settings.min_sites:
            if time.monotonic() > deadline:
                raise RoundFailed(
                    f"{len(nodes)} SuperNodes connected after {self.settings.node_wait_timeout:g} s, "
                    f"fewer than min_sites={self.settings.min_sites}"
                )
            time.sleep(0.5)
        return sorted(nodes)

    def _messages(self, grid: Grid, kind: str, server_round: int) -> list[Message]:
        nodes = self._nodes(grid)
        config = ConfigRecord({"server-round": server_round, "phase": self.server.phase})
        record = RecordDict({ARRAYS: self.arrays(), CONFIG: config})
        self._sent, self._started, self._nodes_sent = len(nodes), time.perf_counter(), nodes
        return [Message(content=record, message_type=kind, dst_node_id=node) for node in nodes]

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        # Flower hands back what aggregate_train returned, possibly changed by a wrapper (DP noise): send that
        self.server.adopt(from_record(arrays))
        return self._messages(grid, MessageType.TRAIN, server_round)

    def _read(self, server_round: int, replies: Iterable[Message]) -> tuple[list[Reply], dict[str, str]]:
        good: list[Reply] = []
        bad: dict[str, str] = {}
        answered: set[int] = set()
        for msg in replies:
            node = msg.metadata.src_node_id
            answered.add(node)
            if msg.has_error():
                bad[self.name(node)] = msg.error.reason or "error reply"
                log.warning("round %d: %s failed: %s", server_round, self.name(node), msg.error.reason)
                continue
            parsed = parse_reply(msg)
            if isinstance(parsed, str):
                bad[self.name(node)] = parsed
                log.warning("round %d: %s", server_round, parsed)
            else:
                self.site_of[node] = parsed.site
                good.append(parsed)
        for node in self._nodes_sent:  # no reply at all before the round timeout
            if node not in answered and self.site_of.get(node):
                bad[self.name(node)] = "no reply before the round timeout"
                log.warning("round %d: %s did not answer", server_round, self.name(node))
        return good, bad

    def identify(self, grid: Grid) -> dict[int, str]:
        """Ask every connected SuperNode its site name (a query message, no arrays) before the first round, so a
        site that dies before it ever answers a training round is still named by its site in the round record and
        the log. A node that does not answer within ``round_timeout`` stays ``node-<id>``; nothing else depends on
        it."""
        nodes = self._nodes(grid)
        asks = [Message(content=RecordDict({CONFIG: ConfigRecord({"ask": SITE})}), message_type=MessageType.QUERY,
                        dst_node_id=node) for node in nodes]  # fmt: skip
        for msg in grid.send_and_receive(asks, timeout=self.settings.round_timeout):
            if msg.has_error() or SITE not in msg.content.config_records:
                continue
            name = str(msg.content.config_records[SITE].get("name", ""))
            if name:
                self.site_of[msg.metadata.src_node_id] = name
        log.info("sites: %s", ", ".join(f"{self.name(n)} (node {n})" for n in nodes))
        return dict(self.site_of)

    def name(self, node: int) -> str:
        """A node's site name once it has answered a round, else ``node-<id>``."""
        return self.site_of.get(node) or f"node-{node}"

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        good, failed = self._read(server_round, replies)
        seconds = time.perf_counter() - self._started
        record = self.server.aggregate(good, sent=self._sent, failed=failed, seconds=seconds)
        summary = record.summary()
        log.info(
            "round %d (%s): %d sites averaged, %d rejected, %d missing; val accuracy %.3f; %.1f s",
            record.round, record.phase, len(record.accepted), len(record.rejected), record.missing,
            summary.get("val_accuracy", float("nan")), seconds,
        )  # fmt: skip
        return self.arrays(), MetricRecord({k: float(v) for k, v in summary.items()})

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        if server_round != self.settings.total_rounds:
            return []  # per-round evaluation rides on the training messages
        return self._messages(grid, MessageType.EVALUATE, server_round)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        if server_round != self.settings.total_rounds:
            return None
        good, _ = self._read(server_round, replies)
        self.final_eval = {r.site: {**r.metrics, "num_examples": float(r.num_examples)} for r in good}
        total = sum(r.num_examples for r in good)
        if not good or total == 0:
            return None
        keys = {k for r in good for k in r.metrics}
        return MetricRecord(
            {k: sum(r.metrics.get(k, 0.0) * r.num_examples for r in good) / total for k in sorted(keys)}
        )
