"""Secure aggregation (``settings.secure_aggregation``; issue 22): Flower's SecAgg+ protocol, so the server learns
only the weighted sum of the sites' updates, never one site's.

    run_secure(grid, context, server)          # the ServerApp's rounds, instead of SLoRAStrategy.start
    ClientApp(mods=[secagg_when_asked])        # the ClientApp masks its update when the server runs SecAgg+

Flower 1.42 ships SecAgg+ as a workflow of its *legacy* API (``flwr.server.workflow.SecAggPlusWorkflow`` inside
``DefaultWorkflow``, which demand a ``LegacyContext`` and a legacy ``flwr.server.strategy.Strategy``) and a
client mod (``secaggplus_mod``) that reads the legacy ``FitIns``/``FitRes`` layout. :class:`SecureSLoRA` is that
legacy strategy over the same :class:`~components.federated.server.FederatedServer`; the training round of the
ClientApp answers in the legacy layout when the message carries SecAgg+'s configs.

What moves where:

- **Down**: the round's payload (``ndarrays`` in payload key order; the key names ride in the ``FitIns`` config).
- **Up, masked**: each site's *update* (its reply minus the payload), validated at the site before masking (keys,
  shapes, NaN/Inf: :func:`~components.federated.server.check_update`), clipped there to ``clip_norm`` (when set),
  multiplied by its weight ``min(num_examples, max_weight) / max_weight``, quantized (stochastic rounding to
  ``2**22`` levels over ``[-clipping_range, clipping_range]``, ``clipping_range = clip_norm`` or 1) and masked.
- **Server**: unmasks only the sum (Shamir shares recover the masks of sites that dropped after sharing keys),
  divides by the sum of weights, validates the aggregate (keys, shapes, finite, norm within ``clip_norm``) and adds
  it to the state (:meth:`FederatedServer.apply_aggregate`); with DP, the Gaussian noise goes onto the aggregate
  here (central DP on the sum: the server never sees one update).
- **Not private**: the per-site metrics (train loss, validation accuracy of the global model) and claimed example
  counts travel in the clear beside the masked vector, as in Flower's protocol. Robustness against a malicious
  site is limited to what the sum shows (an honest site clips itself; the server can only bound the aggregate).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import (
    Code,
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    Parameters,
    Scalar,
    Status,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.compat.common import recorddict_compat as compat
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import Strategy as LegacyStrategy
from flwr.serverapp import Grid

from components.federated.server import FederatedServer, RoundFailed, check_update, flat_norm
from components.federated.settings import FedSettings

log = logging.getLogger("medtune.federated")
KEYS, ROUND, SITE = "keys", "server-round", "site"
QUANTIZATION_RANGE = 1 << 22


def clipping_range(settings: FedSettings) -> float:
    """The per-coordinate range SecAgg+ quantizes over: the clip norm bounds every coordinate of a clipped update."""
    return settings.clip_norm if settings.clip_norm > 0 else 1.0


def max_weight(settings: FedSettings) -> float:
    return float(settings.max_examples) if settings.max_examples > 0 else 1000.0


def secagg_when_asked(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Flower's ``secaggplus_mod`` for the messages of a SecAgg+ round; every other message passes untouched."""
    from flwr.client.mod import secaggplus_mod

    if msg.metadata.message_type == MessageType.TRAIN and RECORD_KEY_CONFIGS in msg.content.config_records:
        return secaggplus_mod(msg, context, call_next)
    return call_next(msg, context)


def is_secure(msg: Message) -> bool:
    """Whether a training message is SecAgg+'s (the legacy FitIns layout) rather than medtune's own."""
    return "fitins.parameters" in msg.content.array_records


def read_fitins(msg: Message) -> tuple[dict[str, np.ndarray], int]:
    """The payload (by key) and the round of a SecAgg+ training message."""
    fitins = compat.recorddict_to_fitins(msg.content, keep_input=True)
    keys = json.loads(str(fitins.config[KEYS]))
    arrays = parameters_to_ndarrays(fitins.parameters)
    if len(keys) != len(arrays):
        raise ValueError(f"SecAgg+ payload: {len(arrays)} arrays for {len(keys)} keys")
    return dict(zip(keys, arrays, strict=True)), int(fitins.config[ROUND])


def secure_reply(
    settings: FedSettings,
    payload: Mapping[str, np.ndarray],
    arrays: Mapping[str, np.ndarray],
    metrics: Mapping[str, float],
    num_examples: int,
    site: str,
) -> RecordDict:
    """A site's SecAgg+ answer: its update validated and clipped *before* the mod masks it (the server never sees
    it alone, so it cannot check it). A bad update raises: the site drops out of the round instead."""
    expected = {k: tuple(np.shape(v)) for k, v in payload.items()}
    reason = check_update(arrays, expected)
    if reason is not None:
        raise ValueError(f"site {site}: refusing to send an invalid update: {reason}")
    update = {k: np.asarray(arrays[k], np.float64) - np.asarray(payload[k], np.float64) for k in payload}
    norm = flat_norm(update)
    if settings.clip_norm > 0 and norm > settings.clip_norm:
        update = {k: v * (settings.clip_norm / norm) for k, v in update.items()}
    bound = clipping_range(settings)
    if max(float(np.max(np.abs(v), initial=0.0)) for v in update.values()) > bound:
        log.warning("site %s: update coordinates beyond +-%g are clipped by SecAgg+'s quantization", site, bound)
    n = min(int(num_examples), int(max_weight(settings)))
    fit_metrics: dict[str, Scalar] = {**{k: float(v) for k, v in metrics.items()}, SITE: site, "update_norm": norm}
    res = FitRes(
        status=Status(code=Code.OK, message=""),
        parameters=ndarrays_to_parameters([update[k].astype(np.float32) for k in payload]),
        num_examples=n,
        metrics=fit_metrics,
    )
    return compat.fitres_to_recorddict(res, keep_input=False)


class SecureSLoRA(LegacyStrategy):
    """A legacy Flower strategy over :class:`FederatedServer` for ``SecAggPlusWorkflow``: it sees the sum only."""

    def __init__(self, server: FederatedServer, site_of: Mapping[int, str] | None = None):
        self.server = server
        self.settings = server.settings
        self._started = 0.0
        self._sent: list[int] = []  # the node ids this round's FitIns went to
        self.site_of: dict[int, str] = dict(site_of or {})  # node id -> site name (identify, then each reply)

    def name(self, node: int) -> str:
        return self.site_of.get(node) or f"node-{node}"

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        return ndarrays_to_parameters(list(self.server.payload().values()))

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        if server_round != self.server.round:  # SecAgg+ halted the round before aggregation
            raise RoundFailed(
                f"round {self.server.round}: secure aggregation halted (fewer sites than its reconstruction "
                f"threshold answered, or the protocol failed); see the log above"
            )
        s = self.settings
        if not client_manager.wait_for(s.min_sites, timeout=int(s.node_wait_timeout)):
            raise RoundFailed(f"{client_manager.num_available()} SuperNodes connected after "
                              f"{s.node_wait_timeout:g} s, fewer than min_sites={s.min_sites}")  # fmt: skip
        payload = self.server.payload()
        config: dict[str, Scalar] = {KEYS: json.dumps(list(payload)), ROUND: server_round, "phase": self.server.phase}
        fitins = FitIns(ndarrays_to_parameters(list(payload.values())), config)
        clients = client_manager.all()
        self._sent, self._started = sorted(int(proxy.node_id) for proxy in clients.values()), time.perf_counter()
        return [(proxy, fitins) for _, proxy in sorted(clients.items())]

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        if not results:
            raise RoundFailed(f"round {server_round}: no site's masked update could be aggregated")
        keys = list(self.server.payload())
        summed = parameters_to_ndarrays(results[0][1].parameters)  # SecAgg+ put the weighted mean in every one
        if len(summed) != len(keys):
            raise RoundFailed(f"round {server_round}: the aggregate has {len(summed)} arrays, expected {len(keys)}")
        for proxy, res in results:
            if res.metrics.get(SITE):
                self.site_of[int(proxy.node_id)] = str(res.metrics[SITE])
        sites = {self.name(int(proxy.node_id)): res for proxy, res in results}
        # Flower's workflow reports no failures for a site that dropped out mid-protocol (its masks are recovered
        # from the others' shares): every node the round was sent to and whose masked update is not in the sum
        answered = {int(proxy.node_id) for proxy, _ in results}
        failed = {self.name(node): "dropped out of the SecAgg+ round (no masked update in the sum)"
                  for node in self._sent if node not in answered}  # fmt: skip
        for i, f in enumerate(failures):
            if isinstance(f, tuple):
                failed[self.name(int(f[0].node_id))] = f"failed: {f[1].status.message}"
            elif not failed:  # an error the workflow could not tie to a node
                failed[f"failure-{i}"] = str(f)
        for site, why in sorted(failed.items()):
            log.warning("round %d: %s %s", server_round, site, why)
        record = self.server.apply_aggregate(
            dict(zip(keys, summed, strict=True)),
            sites={
                site: {**{k: float(v) for k, v in res.metrics.items() if k != SITE}, "num_examples": res.num_examples}
                for site, res in sites.items()
            },
            sent=len(self._sent),
            failed=failed,
            seconds=time.perf_counter() - self._started,
        )
        summary = record.summary()
        log.info(
            "round %d (%s, SecAgg+): %d sites summed, %d failed; val accuracy %.3f; %.1f s",
            record.round, record.phase, len(record.accepted), len(failed),
            summary.get("val_accuracy", float("nan")), record.seconds,
        )  # fmt: skip
        return ndarrays_to_parameters(list(self.server.payload().values())), {}

    def configure_evaluate(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, EvaluateIns]]:
        return []  # the final evaluation runs on medtune's own messages (run_secure)

    def aggregate_evaluate(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, EvaluateRes]],
        failures: list[tuple[ClientProxy, EvaluateRes] | BaseException],
    ) -> tuple[float | None, dict[str, Scalar]]:
        return None, {}

    def evaluate(self, server_round: int, parameters: Parameters) -> tuple[float, dict[str, Scalar]] | None:
        return None


def _tolerant_workflow_class() -> type:
    from flwr.server.workflow import SecAggPlusWorkflow

    class DropoutTolerantSecAggPlus(SecAggPlusWorkflow):
        """Flower 1.42's SecAgg+ workflow, except that a site which drops before it has shared its keys (stage 0
        or 1) counts as never sampled. Flower keeps it among the sampled nodes and then, in the unmask stage, asks
        for shares of its key that were never made ("Not enough shares to recover secret"), halting the round,
        though no survivor masked anything with it (a site masks only with the sites whose shares reached it)."""

        def share_keys_stage(self, grid: Grid, context: Any, state: Any) -> bool:
            ok = bool(super().share_keys_stage(grid, context, state))
            dropped = set(state.sampled_node_ids) - set(state.active_node_ids)
            if dropped:
                log.warning("SecAgg+: %d site(s) dropped before sharing keys; the round goes on without them",
                            len(dropped))  # fmt: skip
            state.sampled_node_ids = set(state.active_node_ids)
            return ok

    return DropoutTolerantSecAggPlus


def run_secure(
    grid: Grid, context: Context, server: FederatedServer, site_of: Mapping[int, str] | None = None
) -> dict[str, dict[str, float]]:
    """Every training round of ``server`` under SecAgg+, then the final evaluation at every site (medtune's
    message, in the clear: it carries metrics only). Returns the final per-site evaluation. ``site_of`` (node id
    -> site name, from :meth:`SLoRAStrategy.identify`) names a site that drops out before it ever answers."""
    from flwr.server import LegacyContext, ServerConfig
    from flwr.server.workflow import DefaultWorkflow

    from components.federated.strategy import SLoRAStrategy

    s = server.settings
    strategy = SecureSLoRA(server, site_of)
    legacy = LegacyContext(context, config=ServerConfig(num_rounds=s.total_rounds), strategy=strategy)
    workflow = DefaultWorkflow(
        fit_workflow=_tolerant_workflow_class()(
            num_shares=1.0,  # every site shares its keys with every other (the sites are few)
            reconstruction_threshold=max(2, s.min_sites),  # shares that recover a dropped site's masks
            max_weight=max_weight(s),
            clipping_range=clipping_range(s),
            quantization_range=QUANTIZATION_RANGE,
            timeout=s.round_timeout,
        )
    )
    workflow(grid, legacy)
    if not server.finished:
        raise RoundFailed(f"round {server.round}: secure aggregation halted before the last round")
    plain = SLoRAStrategy(server)
    plain.site_of.update(strategy.site_of)
    messages = list(plain.configure_evaluate(s.total_rounds, plain.arrays(), ConfigRecord(), grid))
    plain.aggregate_evaluate(s.total_rounds, grid.send_and_receive(messages, timeout=s.round_timeout))
    return plain.final_eval


def describe(settings: FedSettings) -> dict[str, Any]:
    """SecAgg+'s parameters as run, for the history."""
    return {"protocol": "SecAgg+ (Flower)", "clipping_range": clipping_range(settings),
            "quantization_range": QUANTIZATION_RANGE, "max_weight": max_weight(settings)}  # fmt: skip
