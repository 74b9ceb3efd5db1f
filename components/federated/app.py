"""medtune's Flower apps: the ServerApp runs the SLoRA strategy, the ClientApp trains one site.

Deployment (``infra/flower/README.md``): the SuperLink runs ``server_app`` and every SuperNode ``client_app`` of
this module, named in ``infra/flower/pyproject.toml``; settings come from the run config (``flwr run -c``) and a
SuperNode's site from its node config (its own records ``data`` and name ``site``, or ``partition-id`` and
``num-partitions`` for the tasks that split one set)::

    flower-superlink --insecure --port 9092                       # loopback only; TLS across machines
    medtune-supernode --warm --insecure --superlink 127.0.0.1:9092 --port 9094 \
        --node-config 'data="/srv/a.jsonl" site="hospital-a"'     # the site's own records, kept loaded (warm)
    flwr run infra/flower medtune --stream                        # "medtune" names 127.0.0.1:9092 in config.toml

Before the first round the ServerApp asks every SuperNode its site name (a query message), so a site that drops
out before it ever answers a round is still named by its site, not its Flower node id.

Simulation (:func:`components.federated.runner.simulate`) builds the same apps with the settings bound in
(``make_server_app(settings)``), since ``run_simulation`` takes no run config.

Every failure is bounded and visible: a ClientApp that raises becomes an error reply (Flower's), the server
records it and goes on while ``min_sites`` valid updates arrive; a round that cannot reach ``min_sites`` fails
the run with :class:`~components.federated.server.RoundFailed`, after writing the history so far.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Mapping
from typing import Any

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from components.federated.client import evaluate_payload, local_round
from components.federated.results import write_results
from components.federated.secagg import is_secure, read_fitins, run_secure, secagg_when_asked, secure_reply
from components.federated.server import FederatedServer
from components.federated.settings import FedSettings
from components.federated.strategy import ARRAYS, CONFIG, SITE, SLoRAStrategy, from_record, reply_content
from components.federated.tasks import FedTask, SiteRef, make_task, shapes

log = logging.getLogger("medtune.federated")
_TASKS: dict[tuple[str, str, SiteRef | None], FedTask] = {}  # per process: a site's data and model load once
CACHED_TASKS = 4


def task_args(settings: FedSettings) -> dict[str, Any]:
    """The task's arguments: its own settings plus the run's shared seed."""
    return {"seed": settings.seed, **settings.task_args}


def site_of(node_config: Mapping[str, Any]) -> SiteRef:
    """A SuperNode's site from its node config: its own records (``data``, a path on the SuperNode's host) and name
    (``site``), or, for the tasks that split one synthetic or public set, ``partition-id`` and ``num-partitions``
    (what Flower's simulation sets)."""
    data, name = str(node_config.get("data", "")), str(node_config.get("site", ""))
    try:
        if data and "partition-id" not in node_config:
            return SiteRef(0, 1, data, name)
        return SiteRef(int(node_config["partition-id"]), int(node_config["num-partitions"]), data, name)
    except KeyError as e:
        raise ValueError(f"SuperNode node config lacks {e.args[0]!r}: start it with --node-config "
                         "'data=\"/path/to/this-site.jsonl\" site=\"name\"' (the site's own records) or "
                         "'partition-id=N num-partitions=M'") from None  # fmt: skip


def cached_task(settings: FedSettings, site: SiteRef | None) -> FedTask:
    """The task of ``site`` under ``settings``, built once per process: keyed by the task, a digest of its
    arguments (model path, data, seed ...) and the site, so a warm SuperNode (:mod:`components.federated.warm`)
    keeps the base model and the site's records loaded from round to round and from run to run with the same
    settings. A new key evicts the oldest beyond :data:`CACHED_TASKS` (a different model replaces the old one)."""
    digest = hashlib.sha256(json.dumps(task_args(settings), sort_keys=True).encode()).hexdigest()[:16]
    key = (settings.task, digest, site)
    if key in _TASKS:
        _TASKS[key] = _TASKS.pop(key)  # most recently used last
        log.info("task %s for %s re-used (loaded in this process before)", settings.task, _TASKS[key].site)
        return _TASKS[key]
    started = time.perf_counter()
    task = make_task(settings.task, task_args(settings), site)
    while len(_TASKS) >= CACHED_TASKS:
        _TASKS.pop(next(iter(_TASKS)))
    _TASKS[key] = task
    log.info("task %s for %s loaded in %.1f s", settings.task, task.site, time.perf_counter() - started)
    return task


def run_server(grid: Grid, settings: FedSettings, context: Context | None = None) -> FederatedServer:
    """All rounds of ``settings`` on ``grid``; the history goes to ``settings.out_dir`` even when a round fails.
    With ``secure_aggregation`` the rounds run Flower's SecAgg+ workflow (it needs the ServerApp's ``context``)."""
    targets, heads = shapes(cached_task(settings, None))
    server = FederatedServer(settings, targets, heads)
    strategy = SLoRAStrategy(server)
    try:
        names = strategy.identify(grid)  # node id -> site name, so a site lost in its first round is named
        if settings.secure_aggregation:
            if context is None:
                raise ValueError("secure aggregation needs the ServerApp's context")
            strategy.final_eval = run_secure(grid, context, server, names)
        else:
            strategy.start(grid, strategy.arrays(), num_rounds=settings.total_rounds, timeout=settings.round_timeout)
    except BaseException as e:
        if settings.out_dir:
            write_results(settings.out_dir, server, strategy.final_eval, status="failed", error=str(e))
        raise
    if settings.out_dir:
        write_results(settings.out_dir, server, strategy.final_eval, status="finished")
    return server


def make_server_app(settings: FedSettings | None = None) -> ServerApp:
    """A ServerApp with ``settings`` bound in, or (None) read from the run config."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run_server(grid, settings or FedSettings.from_config(context.run_config), context)

    return app


def make_client_app(settings: FedSettings | None = None) -> ClientApp:
    """A ClientApp with ``settings`` bound in, or (None) read from the run config."""
    app = ClientApp(mods=[secagg_when_asked])  # SecAgg+'s masking, for the messages of a secure round only

    def setup(msg: Message, context: Context) -> tuple[FedSettings, FedTask, dict[str, Any]]:
        s = settings or FedSettings.from_config(context.run_config)
        return s, cached_task(s, site_of(context.node_config)), from_record(msg.content.array_records[ARRAYS])

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        if is_secure(msg):  # SecAgg+: validate and clip here, the mod masks the update after
            s = settings or FedSettings.from_config(context.run_config)
            task = cached_task(s, site_of(context.node_config))
            payload, server_round = read_fitins(msg)
            out, metrics = local_round(task, s, payload, server_round)
            content = secure_reply(s, payload, out, metrics, task.num_examples(), task.site)
            return Message(content, reply_to=msg)
        s, task, arrays = setup(msg, context)
        server_round = int(msg.content.config_records[CONFIG]["server-round"])  # type: ignore[arg-type]
        out, metrics = local_round(task, s, arrays, server_round)
        return Message(reply_content(task.site, out, metrics, task.num_examples()), reply_to=msg)

    @app.query()
    def query(msg: Message, context: Context) -> Message:  # the server asks a node its site name (identify)
        s = settings or FedSettings.from_config(context.run_config)
        task = cached_task(s, site_of(context.node_config))
        return Message(RecordDict({SITE: ConfigRecord({"name": task.site})}), reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        s, task, arrays = setup(msg, context)
        metrics = evaluate_payload(task, s, arrays)
        n = int(metrics.pop("examples", 0))
        return Message(reply_content(task.site, None, metrics, n), reply_to=msg)

    return app


server_app = make_server_app()
client_app = make_client_app()
