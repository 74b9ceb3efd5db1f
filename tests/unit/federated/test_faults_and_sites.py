"""Rejected updates never reach the average; sites keep every record exactly once; settings survive Flower's run
config (issue 7 acceptance).

    .venv/bin/pytest tests/unit/federated
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import numpy as np
import pytest
from flwr.app import Error, Message, MessageType, RecordDict
from flwr.common.config import parse_config_args

from components.federated.partition import PartitionError, dirichlet_partition, site_partition
from components.federated.server import FederatedServer, Reply, RoundFailed, check_update
from components.federated.settings import FedSettings
from components.federated.strategy import SLoRAStrategy, reply_content

TARGETS = {"w": (4, 3)}
HEADS = {"h": (2,)}


def _server(min_sites: int = 2, method: str = "fedavg_full") -> FederatedServer:
    return FederatedServer(FedSettings(method=method, min_sites=min_sites, rounds_lora=2), TARGETS, HEADS)


def _update(value: float) -> dict[str, np.ndarray]:
    return {"w::delta": np.full((4, 3), value, np.float32), "h::delta": np.full(2, value, np.float32)}


BAD = {
    "nan": {**_update(1.0), "w::delta": np.full((4, 3), np.nan, np.float32)},
    "inf": {**_update(1.0), "h::delta": np.array([np.inf, 0.0], np.float32)},
    "shape": {**_update(1.0), "w::delta": np.zeros((3, 4), np.float32)},
    "missing key": {"w::delta": np.zeros((4, 3), np.float32)},
    "extra key": {**_update(1.0), "evil::delta": np.zeros(1, np.float32)},
    "integer": {**_update(1.0), "h::delta": np.zeros(2, np.int64)},
}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_a_bad_update_is_rejected_with_a_reason_and_never_averaged(kind: str) -> None:
    server = _server()
    replies = [Reply("a", _update(1.0), 10), Reply("b", _update(3.0), 30), Reply("bad", BAD[kind], 1000)]
    record = server.aggregate(replies)
    assert record.accepted == ["a", "b"] and list(record.rejected) == ["bad"]
    assert check_update(BAD[kind], {"w::delta": (4, 3), "h::delta": (2,)}) == record.rejected["bad"]
    np.testing.assert_allclose(server.state["w::delta"], 2.5)  # (1*10 + 3*30) / 40: the bad one is not in it
    np.testing.assert_allclose(server.state["h::delta"], 2.5)


def test_too_few_valid_updates_fail_the_round_and_leave_the_state_alone() -> None:
    server = _server(min_sites=2)
    before = {k: v.copy() for k, v in server.state.items()}
    with pytest.raises(RoundFailed, match="1 valid updates.*min_sites=2"):
        server.aggregate([Reply("a", _update(1.0), 10), Reply("bad", BAD["nan"], 10)], sent=3)
    assert all(np.array_equal(before[k], server.state[k]) for k in before) and server.round == 1
    assert server.history[-1].missing == 1 and "bad" in server.history[-1].rejected


@pytest.fixture
def flower_identity() -> Iterator[None]:
    """Flower stamps messages with the running task's identity; outside a run, the test sets one."""
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


def test_strategy_drops_error_replies_and_poisoned_updates_from_flower_messages(flower_identity: None) -> None:
    strategy = SLoRAStrategy(_server(min_sites=2))
    sent = [Message(RecordDict({}), message_type=MessageType.TRAIN, dst_node_id=n) for n in (11, 12, 13, 14)]
    strategy._sent = len(sent)
    replies = [
        Message(reply_content("site-a", _update(1.0), {"train_loss": 0.5}, 10), reply_to=sent[0]),
        Message(reply_content("site-b", _update(3.0), {"train_loss": 0.7}, 30), reply_to=sent[1]),
        Message(reply_content("site-c", BAD["nan"], {"train_loss": 0.1}, 999), reply_to=sent[2]),
        Message(Error(code=0, reason="Node Unavailable"), reply_to=sent[3]),
    ]
    arrays, metrics = strategy.aggregate_train(1, replies)
    assert arrays is not None and metrics is not None
    np.testing.assert_allclose(arrays["w::delta"].numpy(), 2.5)
    record = strategy.server.history[-1]
    assert record.accepted == ["site-a", "site-b"]
    assert set(record.rejected) == {"site-c", "node-14"} and "NaN" in record.rejected["site-c"]
    assert metrics["sites_accepted"] == 2 and metrics["train_loss"] == pytest.approx((0.5 * 10 + 0.7 * 30) / 40)


@pytest.mark.parametrize("alpha", [0.1, 1.0, 100.0])
def test_dirichlet_partition_keeps_every_record_in_exactly_one_site(alpha: float) -> None:
    labels = [i % 11 for i in range(1100)]
    parts = dirichlet_partition(labels, 10, alpha, seed=3, min_size=5)
    flat = [i for p in parts for i in p]
    assert len(parts) == 10 and sorted(flat) == list(range(1100)) and min(map(len, parts)) >= 5
    assert parts == dirichlet_partition(labels, 10, alpha, seed=3, min_size=5)  # a pure function of the seed


def test_smaller_alpha_gives_more_skewed_sites() -> None:
    labels = [i % 11 for i in range(2200)]

    def skew(alpha: float) -> float:  # mean share of each site's most common label
        parts = dirichlet_partition(labels, 10, alpha, seed=0)
        return float(np.mean([Counter(labels[i] for i in p).most_common(1)[0][1] / len(p) for p in parts]))

    assert skew(0.1) > skew(1.0) > skew(100.0) and skew(100.0) < 0.2


def test_dirichlet_partition_refuses_what_it_cannot_do() -> None:
    with pytest.raises(PartitionError, match="cannot give 10 sites"):
        dirichlet_partition([0, 1, 2], 10, 1.0, seed=0)


def test_site_partition_by_features_site() -> None:
    records = [{"id": f"r{i}", "features": {"site": "b" if i % 3 else "a"}} for i in range(10)]
    sites = site_partition(records)
    assert list(sites) == ["a", "b"] and sorted(i for p in sites.values() for i in p) == list(range(10))
    assert sites["a"] == [0, 3, 6, 9]
    with pytest.raises(PartitionError, match="record 'x' has no features.site"):
        site_partition([*records, {"id": "x", "features": {}}])


def test_settings_round_trip_through_a_flower_run_config() -> None:
    s = FedSettings(method="fedavg_lora", rounds_sparse=0, rounds_lora=4, task="mlp", task_args={"alpha": 0.1},
                    out_dir="/tmp/out dir")  # fmt: skip
    parsed = parse_config_args([" ".join(s.to_flwr_args())])
    assert FedSettings.from_config(parsed) == s
    with pytest.raises(ValueError, match="unknown federated run config keys: bogus"):
        FedSettings.from_config({"bogus": 1})
    with pytest.raises(ValueError, match="slora needs rounds_sparse >= 1"):
        FedSettings(method="slora", rounds_sparse=0)


def test_the_flower_app_config_names_every_setting() -> None:
    """The SuperLink refuses `flwr run -c key=value` for a key the FAB's [tool.flwr.app.config] lacks."""
    import tomllib
    from pathlib import Path

    fab = Path(__file__).resolve().parents[3] / "infra" / "flower" / "pyproject.toml"
    config = tomllib.loads(fab.read_text())["tool"]["flwr"]["app"]["config"]
    assert set(config) == set(FedSettings().to_config())
    assert FedSettings.from_config(config) == FedSettings(rounds_sparse=2, rounds_lora=3, node_wait_timeout=60.0)


def test_a_site_that_fails_after_answering_once_is_named(flower_identity: None) -> None:
    from types import SimpleNamespace

    from flwr.app import ConfigRecord

    strategy = SLoRAStrategy(FederatedServer(FedSettings(method="fedavg_full", min_sites=1, rounds_lora=3),
                                             TARGETS, HEADS))  # fmt: skip
    grid = SimpleNamespace(get_node_ids=lambda: [11, 12, 13])
    sent = list(strategy.configure_train(1, strategy.arrays(), ConfigRecord(), grid))  # type: ignore[arg-type]
    names = dict(zip((11, 12, 13), ("site-a", "site-b", "site-c"), strict=True))
    replies = [Message(reply_content(names[m.metadata.dst_node_id], _update(1.0), {}, 10), reply_to=m) for m in sent]
    strategy.aggregate_train(1, replies)  # a reply's source is the node its request went to
    sent = list(strategy.configure_train(2, strategy.arrays(), ConfigRecord(), grid))  # type: ignore[arg-type]
    ok = Message(reply_content("site-a", _update(1.0), {}, 10), reply_to=sent[0])
    dead = Message(Error(code=0, reason="Node Unavailable"), reply_to=sent[2])
    strategy.aggregate_train(2, [ok, dead])  # node 12 (site-b) never answers
    record = strategy.server.history[-1]
    assert record.accepted == ["site-a"] and record.missing == 0
    assert record.rejected == {"site-c": "no update: Node Unavailable",
                               "site-b": "no update: no reply before the round timeout"}  # fmt: skip
