"""Adaptive clipping under client-level DP (issue 22; Andrew et al. 2021): the clip norm moves geometrically toward
the target quantile of the sites' update norms, driven by the noised count of unclipped updates; the updates get
the paper's larger noise multiplier so that the accountant's epsilon (at the run's sigma) covers both releases.

    .venv/bin/pytest tests/unit/federated/test_adaptive_clipping.py
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from components.federated.server import FederatedServer, Reply, flat_norm
from components.federated.settings import FedSettings

TARGETS = {"w": (6, 5)}
HEADS = {"h": (3,)}


class _Capture:
    """A noise source that records what it is asked for and answers zeros (the noise-free mechanism)."""

    def __init__(self) -> None:
        self.scales: list[float] = []

    def normal(self, loc: float, scale: float, size: Any = None) -> Any:
        self.scales.append(float(scale))
        return np.zeros(size) if size is not None else 0.0


def _server(noise: Any = None, **kw: Any) -> FederatedServer:
    settings = FedSettings(**{"method": "fedavg_full", "rounds_sparse": 0, "rounds_lora": 60, "min_sites": 2,
                              "clip_norm": 0.1, "dp_noise_multiplier": 0.5, "dp_adaptive_clipping": True,
                              "dp_count_stddev": 1.0, **kw})  # fmt: skip
    return FederatedServer(settings, TARGETS, HEADS, noise=noise or np.random.default_rng(7))


def _replies(server: FederatedServer, norms: list[float]) -> list[Reply]:
    """One site per norm: an update of exactly that L2 norm (random direction)."""
    rng = np.random.default_rng(len(server.history))
    out = []
    for i, norm in enumerate(norms):
        u = {k: rng.normal(size=v.shape) for k, v in server.state.items()}
        scale = norm / flat_norm(u)
        out.append(Reply(f"site-{i}", {k: (server.state[k] + u[k] * scale).astype(np.float32) for k in u}, 50))
    return out


def test_one_step_is_the_papers_geometric_update() -> None:
    capture = _Capture()
    server = _server(capture, clip_norm=2.0, dp_target_quantile=0.5, dp_clip_lr=0.2)
    record = server.aggregate(_replies(server, [1.0, 1.5, 3.0, 4.0]))  # 2 of 4 within C = 2
    assert record.clip_bound == 2.0 and sorted(record.clipped) == ["site-2", "site-3"]
    want = 2.0 * math.exp(-0.2 * (2 / 4 - 0.5))
    assert record.next_clip_bound == pytest.approx(want) and server.privacy is not None
    record = server.aggregate(_replies(server, [1.0, 1.1, 1.2, 1.3]))  # all within C: the bound shrinks
    assert record.clip_bound == pytest.approx(want)
    assert record.next_clip_bound == pytest.approx(want * math.exp(-0.2 * (1.0 - 0.5)))
    record = server.aggregate(_replies(server, [9.0, 9.0, 9.0, 9.0]))  # none within C: the bound grows
    assert record.next_clip_bound == pytest.approx(record.clip_bound * math.exp(0.2 * 0.5))
    # the count's noise was asked at sigma_b, the updates' at sigma_u * C / n (Andrew et al., Theorem 1)
    sigma_u = (0.5**-2 - (2 * 1.0) ** -2) ** -0.5
    assert server.privacy.update_noise_multiplier == pytest.approx(sigma_u) and sigma_u > 0.5
    assert 1.0 in capture.scales and pytest.approx(sigma_u * 2.0 / 4) in capture.scales


@pytest.mark.filterwarnings("ignore:Optimal order is the smallest alpha")  # 150 rounds at sigma 0.3: epsilon is huge
@pytest.mark.parametrize("start", [0.01, 100.0])
def test_the_bound_converges_to_the_target_quantile_of_the_norms(start: float) -> None:
    norms = [float(n) for n in range(1, 11)]  # ten sites, norms 1..10: the median is 5 to 6
    server = _server(clip_norm=start, dp_count_stddev=0.5, dp_noise_multiplier=0.3, dp_clip_lr=0.2, rounds_lora=150)
    for _ in range(150):  # from 0.01 at most 0.1 in log C per round (eta * (1 - 0.5)): ~62 rounds to reach 5
        server.aggregate(_replies(server, norms))
    assert server.privacy is not None
    assert 3.5 < server.privacy.clip_norm < 7.5, server.privacy.clip_norm
    high = _server(clip_norm=start, dp_count_stddev=0.5, dp_noise_multiplier=0.3, dp_target_quantile=0.9,
                   rounds_lora=150)  # fmt: skip
    for _ in range(150):
        high.aggregate(_replies(high, norms))
    assert high.privacy is not None and high.privacy.clip_norm > server.privacy.clip_norm  # a higher quantile


def test_epsilon_is_the_accountants_at_the_runs_sigma_and_the_report_says_adaptive() -> None:
    from opacus.accountants import RDPAccountant

    server = _server(dp_noise_multiplier=0.8, dp_count_stddev=2.0, rounds_lora=3)
    accountant = RDPAccountant()
    for _ in range(3):
        record = server.aggregate(_replies(server, [0.05, 0.2, 0.4]))
        accountant.step(noise_multiplier=0.8, sample_rate=1.0)
        assert record.epsilon == pytest.approx(accountant.get_epsilon(1e-5), rel=1e-9)
    assert server.privacy is not None
    report = server.privacy.to_json()
    assert report["noise_multiplier"] == 0.8 and report["releases"] == 3 and report["clip_norm"] == 0.1  # the start
    adaptive = report["adaptive_clipping"]
    assert adaptive["update_noise_multiplier"] == pytest.approx((0.8**-2 - 4.0**-2) ** -0.5)
    assert adaptive["final_clip_norm"] == pytest.approx(server.history[-1].next_clip_bound)
    # a target epsilon: sigma solved for it, the same accountant, the updates noised more than sigma
    solved = _server(dp_noise_multiplier=0.0, dp_epsilon=8.0, dp_count_stddev=5.0, rounds_lora=2)
    assert solved.privacy is not None
    assert solved.privacy.update_noise_multiplier > solved.privacy.noise_multiplier > 0
    for _ in range(2):
        solved.aggregate(_replies(solved, [0.05, 0.2, 0.4]))
    assert 7.5 < solved.privacy.epsilon <= 8.0


def test_bad_adaptive_clipping_settings_are_refused() -> None:
    base: dict[str, Any] = {"clip_norm": 0.1, "dp_noise_multiplier": 0.5, "dp_adaptive_clipping": True,
                            "dp_count_stddev": 1.0}  # fmt: skip
    FedSettings(**base)  # valid
    with pytest.raises(ValueError, match="needs DP on"):
        FedSettings(dp_adaptive_clipping=True, clip_norm=0.1)
    with pytest.raises(ValueError, match="not with secure aggregation"):
        FedSettings(**base, secure_aggregation=True)
    with pytest.raises(ValueError, match=r"dp_target_quantile 1.5 \(must be in \[0, 1\]\)"):
        FedSettings(**{**base, "dp_target_quantile": 1.5})
    with pytest.raises(ValueError, match=r"dp_clip_lr 0"):
        FedSettings(**{**base, "dp_clip_lr": 0.0})
    # the default sigma_b (min_sites / 20 = 0.1) cannot carry sigma 0.5: the count's noise is part of the budget
    with pytest.raises(ValueError, match=r"needs dp_count_stddev > 0.25 \(it is 0.1"):
        FedSettings(**{**base, "dp_count_stddev": 0.0})
    with pytest.raises(ValueError, match="needs dp_count_stddev"):
        FedSettings(**{**base, "dp_noise_multiplier": 0.0, "dp_epsilon": 1.0, "dp_count_stddev": 0.3})


def test_adaptive_clipping_config_is_checked_at_load_time() -> None:
    from pathlib import Path

    from components.config import ConfigError, load_config

    default = Path(__file__).resolve().parents[3] / "configs" / "default.yaml"
    dp = ["federated.sites=[a,b,c]", "federated.clip_norm=0.1", "federated.dp.noise_multiplier=0.5",
          "federated.dp.adaptive_clipping=true"]  # fmt: skip
    cfg = load_config(default, [*dp, "federated.dp.count_stddev=1.0"]).federated
    assert cfg.dp.adaptive_clipping and cfg.dp.target_quantile == 0.5 and cfg.dp.clip_lr == 0.2
    with pytest.raises(ConfigError, match=r"needs dp.count_stddev > 0.25"):
        load_config(default, dp)
    with pytest.raises(ConfigError, match="target_quantile"):
        load_config(default, [*dp, "federated.dp.count_stddev=1.0", "federated.dp.target_quantile=2"])
    with pytest.raises(ConfigError, match="needs dp.epsilon or dp.noise_multiplier"):
        load_config(default, ["federated.sites=[a,b]", "federated.dp.adaptive_clipping=true"])
