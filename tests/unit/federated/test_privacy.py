"""Robust aggregation and client-level differential privacy (issue 22): one site cannot move the global model
beyond the clip bound, whatever it claims or sends; DP noise reaches the aggregated model (also through Flower's
own DP wrapper around medtune's strategy); the reported epsilon is Opacus' for the run's parameters.

    .venv/bin/pytest tests/unit/federated/test_privacy.py
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Message, MessageType

from components.federated.client import local_round
from components.federated.inprocess import run_in_process
from components.federated.server import FederatedServer, Reply, flat_norm
from components.federated.settings import FedSettings
from components.federated.strategy import ARRAYS, SLoRAStrategy, from_record, reply_content, to_record
from components.federated.tasks import SiteRef, make_task, shapes

torch.set_num_threads(1)
TARGETS = {"w": (8, 6)}
HEADS = {"h": (4,)}


def _server(**kw: object) -> FederatedServer:
    settings = FedSettings(**{"method": "fedavg_full", "rounds_sparse": 0, "rounds_lora": 3, "min_sites": 2, **kw})
    return FederatedServer(settings, TARGETS, HEADS, noise=np.random.default_rng(123))


def _honest(server: FederatedServer, n: int, seed: int = 0) -> list[Reply]:
    rng = np.random.default_rng(seed)
    return [
        Reply(f"site-{i}", {k: v + rng.normal(0, 0.1, v.shape).astype(np.float32) for k, v in server.state.items()},
              100 + 10 * i)
        for i in range(n)
    ]  # fmt: skip


def _attacker(server: FederatedServer, scale: float, claimed: int) -> Reply:
    return Reply("evil", {k: v + scale * 0.1 * np.ones_like(v) for k, v in server.state.items()}, claimed)


def _moved(before: dict[str, np.ndarray], server: FederatedServer) -> float:
    return flat_norm({k: server.state[k].astype(np.float64) - before[k] for k in before})


@pytest.mark.parametrize(("scale", "claimed"), [(1000.0, 100), (1.0, 10**6), (1000.0, 10**6)])
def test_one_site_cannot_move_the_global_model_beyond_the_bound(scale: float, claimed: int) -> None:
    server = _server()
    before = {k: v.astype(np.float64) for k, v in server.state.items()}
    honest = _honest(server, 3)
    honest_norms = [flat_norm({k: r.arrays[k] - before[k] for k in before}) for r in honest]
    record = server.aggregate([*honest, _attacker(server, scale, claimed)])
    bound = 5.0 * sorted([*honest_norms, scale * 0.1 * math.sqrt(52)])[1]  # clip_factor x the lower median norm
    assert record.clip_bound == pytest.approx(bound)
    assert _moved(before, server) <= bound * (1 + 1e-6)
    assert record.accepted == ["site-0", "site-1", "site-2", "evil"]
    if scale > 1:
        assert record.clipped == ["evil"] and record.sites["evil"]["update_norm"] > 100 * bound
    if claimed > 1000:  # the claim is capped at examples_factor x the lower median claim (110)
        assert record.example_cap == pytest.approx(1100.0)
    # without the defences the same replies drag the model far away: the test can fail
    plain = _server(clip_factor=0.0, examples_factor=0.0)
    plain.aggregate([*_honest(plain, 3), _attacker(plain, scale, claimed)])
    assert _moved(before, plain) > 5 * _moved(before, server) or scale == 1.0
    if scale == 1.0:  # a normal-sized update with a huge claim: its weight share is bounded by the cap
        share = lambda s: float(np.mean(s.state["w::delta"]) / 0.1)  # noqa: E731 (the attacker's mean step)
        assert share(plain) > 0.99 and share(server) == pytest.approx(1100 / (1100 + 100 + 110 + 120), abs=0.02)


def test_a_fixed_clip_norm_bounds_every_site() -> None:
    server = _server(clip_norm=0.05)
    before = {k: v.astype(np.float64) for k, v in server.state.items()}
    record = server.aggregate(_honest(server, 3))
    assert record.clip_bound == 0.05 and sorted(record.clipped) == ["site-0", "site-1", "site-2"]
    assert _moved(before, server) <= 0.05 * (1 + 1e-6)


def test_without_outliers_the_default_equals_plain_fedavg() -> None:
    server, plain = _server(), _server(clip_factor=0.0, examples_factor=0.0)
    replies = _honest(server, 3)
    server.aggregate(replies)
    total = sum(r.num_examples for r in replies)
    for key in server.state:
        want = sum(r.arrays[key].astype(np.float64) * r.num_examples for r in replies) / total
        np.testing.assert_allclose(server.state[key], want, rtol=1e-6, atol=1e-7)
    plain.aggregate(replies)
    assert all(np.array_equal(server.state[k], plain.state[k]) for k in server.state)


@pytest.mark.parametrize("how", ["trimmed_mean", "median"])
def test_trimmed_mean_and_median_ignore_a_minority_of_outliers(how: str) -> None:
    server = _server(aggregation=how, trim_fraction=0.2, clip_factor=0.0)
    before = {k: v.astype(np.float64) for k, v in server.state.items()}
    honest = _honest(server, 4)
    server.aggregate([*honest, _attacker(server, 1000.0, 10**6)])
    stack = {k: np.stack([r.arrays[k].astype(np.float64) for r in honest]) for k in before}
    low = {k: s.min(axis=0) for k, s in stack.items()}
    high = {k: s.max(axis=0) for k, s in stack.items()}
    for key in before:  # every coordinate stays within the honest sites' range
        assert np.all(server.state[key] >= low[key] - 1e-6) and np.all(server.state[key] <= high[key] + 1e-6)
    if how == "median":  # five values per coordinate, the attacker's the largest: the third honest one
        for key in before:
            np.testing.assert_allclose(server.state[key], np.sort(stack[key], axis=0)[2], rtol=1e-5, atol=1e-7)


def test_bad_robust_and_dp_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="aggregation 'mean' unknown"):
        FedSettings(aggregation="mean")
    with pytest.raises(ValueError, match="trim_fraction"):
        FedSettings(trim_fraction=0.5)
    with pytest.raises(ValueError, match="DP needs a fixed clip_norm"):
        FedSettings(dp_noise_multiplier=1.0)
    with pytest.raises(ValueError, match="not both"):
        FedSettings(dp_noise_multiplier=1.0, dp_epsilon=8.0, clip_norm=1.0)
    with pytest.raises(ValueError, match="not aggregation 'median'"):
        FedSettings(dp_epsilon=8.0, clip_norm=1.0, aggregation="median")


def test_dp_noise_reaches_the_aggregated_model() -> None:
    sigma, clip = 2.0, 0.05
    server = _server(dp_noise_multiplier=sigma, clip_norm=clip)
    replies = _honest(server, 3)
    before = {k: v.astype(np.float64) for k, v in server.state.items()}
    record = server.aggregate(replies)
    # the clipped, equally weighted mean; then the same draws from the same generator
    clipped = []
    for r in replies:
        u = {k: r.arrays[k].astype(np.float64) - before[k] for k in before}
        clipped.append({k: v * min(1.0, clip / flat_norm(u)) for k, v in u.items()})
    mean = {k: sum(u[k] for u in clipped) / 3 for k in before}
    rng, std = np.random.default_rng(123), sigma * clip / 3
    assert record.noise_std == pytest.approx(std) and record.epsilon is not None and record.epsilon > 0
    noise = {k: rng.normal(0.0, std, size=before[k].shape) for k in before}
    for key in before:
        np.testing.assert_allclose(server.state[key], before[key] + mean[key] + noise[key], rtol=1e-5, atol=1e-6)
        assert not np.allclose(server.state[key], before[key] + mean[key], atol=std / 10)  # noise is there
    # what goes down next round is the noised state
    assert all(np.array_equal(server.payload()[k], server.state[k]) for k in before)


def _mlp_sites(n: int) -> list:
    return [make_task("mlp", {"seed": 0, "alpha": 1.0}, SiteRef(i, n)) for i in range(n)]


@pytest.mark.parametrize(("kw", "rounds"), [({"dp_noise_multiplier": 1.3}, 3), ({"dp_epsilon": 8.0}, 2)])
def test_reported_epsilon_equals_opacus_for_the_runs_parameters(kw: dict[str, float], rounds: int) -> None:
    from opacus.accountants import RDPAccountant
    from opacus.accountants.utils import get_noise_multiplier

    settings = FedSettings(method="fedavg_lora", rounds_sparse=0, rounds_lora=rounds, local_steps=2, clip_norm=0.5,
                           dp_delta=1e-5, **kw)  # type: ignore[arg-type]  # fmt: skip
    server = run_in_process(settings, _mlp_sites(2))
    sigma = kw.get("dp_noise_multiplier") or get_noise_multiplier(
        target_epsilon=8.0, target_delta=1e-5, sample_rate=1.0, steps=rounds, accountant="rdp"
    )
    assert server.privacy is not None and server.privacy.noise_multiplier == pytest.approx(sigma)
    accountant = RDPAccountant()
    for record in server.history:
        accountant.step(noise_multiplier=sigma, sample_rate=1.0)
        assert record.epsilon == pytest.approx(accountant.get_epsilon(1e-5), rel=1e-9)
        assert record.summary()["dp_epsilon"] == record.epsilon
    report = server.privacy.to_json()
    assert report["releases"] == rounds and report["epsilon"] == pytest.approx(accountant.get_epsilon(1e-5))
    if "dp_epsilon" in kw:
        assert 7.5 < report["epsilon"] <= 8.0  # Opacus solves sigma to the target within its tolerance


@pytest.fixture
def flower_identity() -> Iterator[None]:
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


def test_flowers_dp_wrapper_around_the_slora_strategy_keeps_its_noise(flower_identity: None) -> None:
    """Issue 22's two root causes: replies in the payload's key order, and configure_train sending what Flower
    hands back (the wrapper's noised arrays), not the strategy's own un-noised state."""
    from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping

    settings = FedSettings(method="slora", rounds_sparse=1, rounds_lora=1, density=0.5, local_steps=2)
    sites = _mlp_sites(2)
    server = FederatedServer(settings, *shapes(sites[0]))
    strategy = SLoRAStrategy(server)
    wrapper = DifferentialPrivacyServerSideFixedClipping(strategy, noise_multiplier=1.0, clipping_norm=0.1,
                                                         num_sampled_clients=2)  # fmt: skip
    grid = SimpleNamespace(get_node_ids=lambda: [1, 2])
    sent = list(wrapper.configure_train(1, strategy.arrays(), ConfigRecord(), grid))  # type: ignore[arg-type]
    replies = []
    for msg, task in zip(sent, sites, strict=True):
        arrays, metrics = local_round(task, settings, from_record(msg.content.array_records[ARRAYS]), 1)
        assert list(arrays) == list(from_record(msg.content.array_records[ARRAYS]))  # the payload's order
        replies.append(Message(reply_content(task.site, arrays, metrics, task.num_examples()), reply_to=msg))
    noised, _ = wrapper.aggregate_train(1, replies)
    assert noised is not None
    un_noised = from_record(strategy.arrays())  # the strategy's own state after its aggregation
    got = from_record(noised)
    assert any(not np.allclose(got[k], un_noised[k]) for k in got)  # the wrapper added noise
    nxt = list(wrapper.configure_train(2, noised, ConfigRecord(), grid))  # type: ignore[arg-type]
    down = from_record(nxt[0].content.array_records[ARRAYS])
    assert nxt[0].metadata.message_type == MessageType.TRAIN
    assert all(np.array_equal(down[k], got[k]) for k in got)  # the noise went down, not the clean state
    # a payload that does not fit is refused with the reason
    with pytest.raises(ValueError, match="do not fit: wrong keys"):
        strategy.configure_train(2, to_record({"x": np.zeros(1, np.float32)}), ConfigRecord(), grid)  # type: ignore[arg-type]


def test_the_stage_logs_epsilon_per_round_and_per_run(tmp_path: Any) -> None:
    from components.federated.results import read_history, write_results
    from pipelines.federated import _log_history, _log_privacy

    settings = FedSettings(method="fedavg_full", rounds_sparse=0, rounds_lora=2, local_steps=1, clip_norm=0.5,
                           dp_noise_multiplier=1.1)  # fmt: skip
    server = run_in_process(settings, _mlp_sites(2))
    write_results(tmp_path, server, {}, status="finished")
    history = read_history(tmp_path)

    class Session:
        def __init__(self) -> None:
            self.metrics: list[tuple[dict[str, float], int | None]] = []
            self.params: dict[str, Any] = {}

        def log_metrics(self, run_id: str, metrics: dict[str, float], step: int | None = None) -> None:
            self.metrics.append((metrics, step))

        def log_params(self, run_id: str, params: dict[str, Any]) -> None:
            self.params.update(params)

        def child(self, *a: Any, **k: Any) -> Any:
            import contextlib

            return contextlib.nullcontext("child")

        def log_dict(self, *a: Any) -> None:
            pass

    session, lines = Session(), []
    _log_history(session, "run", history)
    _log_privacy(session, "run", history, lines.append)
    per_round = {step: m["federated/dp_epsilon"] for m, step in session.metrics if "federated/dp_epsilon" in m}
    assert per_round == {1: server.history[0].epsilon, 2: server.history[1].epsilon} and per_round[2] > per_round[1]
    total = [m for m, step in session.metrics if "federated/dp_epsilon_total" in m]
    assert total == [{"federated/dp_epsilon_total": server.history[1].epsilon, "federated/dp_noise_multiplier": 1.1}]
    assert history["privacy"]["releases"] == 2 and session.params["federated.dp_accountant"] == "opacus RDP"
    assert len(lines) == 1 and f"epsilon {server.history[1].epsilon:.3g} at delta 1e-05" in lines[0]
