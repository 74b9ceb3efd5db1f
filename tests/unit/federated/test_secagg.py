"""Secure aggregation (issue 22): Flower's SecAgg+ under medtune's SLoRA gives the model plain FedAvg gives (within
the protocol's quantization), the server's strategy only ever receives the sum, a site validates and clips its
update before masking, and the server validates the aggregate after unmasking.

    .venv/bin/pytest tests/unit/federated/test_secagg.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from components.federated.inprocess import run_in_process
from components.federated.results import read_deltas, read_history
from components.federated.secagg import SecureSLoRA
from components.federated.server import FederatedServer, RoundFailed
from components.federated.settings import FedSettings
from components.federated.tasks import SiteRef, make_task

torch.set_num_threads(1)


def test_slora_under_secagg_plus_equals_plain_fedavg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from components.federated.runner import simulate

    seen: list[int] = []
    aggregate_fit = SecureSLoRA.aggregate_fit

    def spy(self: SecureSLoRA, server_round: int, results: list, failures: list) -> tuple:
        # every result carries the same (summed) vector: no site's own update reaches the strategy
        vectors = [tuple(r.parameters.tensors) for _, r in results]
        assert len(set(vectors)) == 1
        seen.append(len(results))
        return aggregate_fit(self, server_round, results, failures)

    monkeypatch.setattr(SecureSLoRA, "aggregate_fit", spy)
    common = dict(method="slora", rounds_sparse=1, rounds_lora=1, density=0.2, local_steps=2, task="mlp",
                  clip_norm=0.1, max_examples=400, round_timeout=60.0, node_wait_timeout=30.0)  # fmt: skip
    secure = FedSettings(**common, secure_aggregation=True, out_dir=str(tmp_path / "secure"))  # type: ignore[arg-type]
    history = simulate(secure, num_sites=3)
    assert seen == [3, 3] and [sorted(r["accepted"]) for r in history["rounds"]] == [["site-0", "site-1", "site-2"]] * 2
    assert history["settings"]["secure_aggregation"] is True and sorted(history["final"]) == [
        "site-0",
        "site-1",
        "site-2",
    ]
    # the same rounds in process, without SecAgg: plain (clipped) FedAvg of the same sites
    plain = FedSettings(**common)  # type: ignore[arg-type]
    tasks = [make_task("mlp", {"seed": 0}, SiteRef(i, 3)) for i in range(3)]
    reference = run_in_process(plain, tasks).final_deltas()
    got = read_deltas(secure.out_dir)
    for key, want in reference.items():
        # SecAgg+ quantizes each weighted update to 2**22 levels over +-clip_norm (stochastic rounding)
        np.testing.assert_allclose(got[key].numpy(), want, atol=2e-6)
        assert np.linalg.norm(got[key].numpy() - want) <= 1e-3 * np.linalg.norm(want)
    assert read_history(secure.out_dir)["status"] == "finished"


def _payload() -> dict[str, np.ndarray]:
    return {"w::delta": np.zeros((4, 3), np.float32), "h::delta": np.zeros(2, np.float32)}


def test_a_site_validates_and_clips_its_update_before_masking() -> None:
    from flwr.common import parameters_to_ndarrays
    from flwr.compat.common import recorddict_compat as compat

    from components.federated.secagg import secure_reply

    settings = FedSettings(clip_norm=0.5, max_examples=100)
    big = {"w::delta": np.ones((4, 3), np.float32), "h::delta": np.ones(2, np.float32)}
    res = compat.recorddict_to_fitres(secure_reply(settings, _payload(), big, {"train_loss": 1.0}, 10**6, "a"), True)
    update = parameters_to_ndarrays(res.parameters)
    assert np.sqrt(sum(float(np.sum(u.astype(np.float64) ** 2)) for u in update)) == pytest.approx(0.5, rel=1e-6)
    assert res.num_examples == 100 and res.metrics["site"] == "a"  # the claim capped at max_examples
    bad = {**big, "w::delta": np.full((4, 3), np.nan, np.float32)}
    with pytest.raises(ValueError, match="site a: refusing to send an invalid update: w::delta: holds NaN"):
        secure_reply(settings, _payload(), bad, {}, 10, "a")
    with pytest.raises(ValueError, match="wrong keys"):
        secure_reply(settings, _payload(), {"w::delta": big["w::delta"]}, {}, 10, "a")


def test_the_server_validates_the_unmasked_aggregate() -> None:
    def server() -> FederatedServer:
        s = FedSettings(method="fedavg_full", rounds_sparse=0, rounds_lora=2, clip_norm=0.5, secure_aggregation=True)
        return FederatedServer(s, {"w": (4, 3)}, {"h": (2,)})

    sites = {"a": {"num_examples": 10.0}, "b": {"num_examples": 20.0}}
    ok = server()
    record = ok.apply_aggregate({"w::delta": np.full((4, 3), 0.1, np.float32), "h::delta": np.zeros(2, np.float32)},
                                sites=sites, sent=3)  # fmt: skip
    assert record.accepted == ["a", "b"] and record.missing == 1 and ok.round == 2
    np.testing.assert_allclose(ok.state["w::delta"], 0.1)
    for update, why in [
        ({"w::delta": np.full((4, 3), np.inf, np.float32), "h::delta": np.zeros(2, np.float32)}, "holds NaN or Inf"),
        ({"w::delta": np.ones((4, 3), np.float32), "h::delta": np.zeros(2, np.float32)}, "exceeds clip_norm 0.5"),
        ({"w::delta": np.zeros((3, 4), np.float32), "h::delta": np.zeros(2, np.float32)}, "shape"),
    ]:
        refused = server()
        with pytest.raises(RoundFailed, match=why):
            refused.apply_aggregate(update, sites=sites, sent=2)
        assert refused.round == 1 and not refused.state["w::delta"].any()
    with pytest.raises(ValueError, match="needs each one"):
        FedSettings(secure_aggregation=True, aggregation="median")
