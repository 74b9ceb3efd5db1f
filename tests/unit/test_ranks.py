"""pipelines/ranks.py without processes: the follower's loop over rank 0's control folder (calls run in order with
this rank's env, the end's exit codes, the bounded wait), the config check and the ``--nproc`` argument strip."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from components.config import ConfigError
from components.training.distributed import DistEnv
from pipelines import ranks

CALLS: list[tuple[Any, ...]] = []


def record(*, value: int, env: DistEnv) -> None:
    CALLS.append((value, env.rank))


def broken(*, env: DistEnv) -> None:
    raise ValueError("the shard is bad\nsecond line")


def test_a_follower_runs_rank_zeros_calls_in_order_then_exits_with_its_end(tmp_path: Path) -> None:
    CALLS.clear()
    leader = ranks.Leader(DistEnv(), tmp_path)
    leader.announce(record, {"value": 1})
    leader.announce(record, {"value": 2})
    leader.end(None, wait_s=0)
    assert ranks.follow(DistEnv(rank=1, world=2), tmp_path, timeout_s=5) == 0
    assert CALLS == [(1, 1), (2, 1)]
    assert (tmp_path / "ack-1").exists()  # what rank 0 waits for (at most ACK_WAIT_S) before it exits


def test_rank_zeros_failure_stops_a_follower_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ranks.Leader(DistEnv(), tmp_path).end("rank 0 failed (exit 1); its message is above", wait_s=0)
    assert ranks.follow(DistEnv(rank=1, world=2), tmp_path, timeout_s=5) == 1
    assert capsys.readouterr().err == "rank 1: stopped: rank 0 failed (exit 1); its message is above\n"


def test_a_failing_call_exits_one_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    leader = ranks.Leader(DistEnv(), tmp_path)
    leader.announce(broken, {})
    leader.end(None, wait_s=0)
    assert ranks.follow(DistEnv(rank=3, world=4), tmp_path, timeout_s=5) == 1
    assert capsys.readouterr().err == "rank 3: broken failed: ValueError: the shard is bad\n"


def test_a_silent_rank_zero_is_waited_for_no_longer_than_the_timeout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    started = time.monotonic()
    assert ranks.follow(DistEnv(rank=1, world=2), tmp_path, timeout_s=0.3) == 1
    assert time.monotonic() - started < 5
    assert "no word from rank 0 for 0.3 s (train.rank_timeout_s)" in capsys.readouterr().err


def test_several_processes_need_a_strategy_and_nproc_is_stripped() -> None:
    ranks.check_config("ddp", 2)
    ranks.check_config("none", 1)
    with pytest.raises(ConfigError, match=r"train.distributed: 'none' under --nproc 2: set train.distributed=ddp"):
        ranks.check_config("none", 2, nproc=2)
    with pytest.raises(ConfigError, match=r"under torchrun \(4 processes\)"):
        ranks.check_config("none", 4)
    ranks.check_config("fsdp", 1, quantize="nf4")  # one process shards nothing
    with pytest.raises(ConfigError, match=r"^model.quantize: nf4 with train.distributed=fsdp under --nproc 2: "):
        ranks.check_config("fsdp", 2, nproc=2, quantize="nf4")
    argv = ["--nproc", "2", "-c", "configs/smoke.yaml", "--nproc=3", "train.distributed=ddp"]
    assert ranks.strip_nproc(argv) == ["-c", "configs/smoke.yaml", "train.distributed=ddp"]


def test_one_process_runs_the_call_itself() -> None:
    CALLS.clear()
    ranks.lockstep("x", record, {"value": 7}, env=DistEnv())
    assert CALLS == [(7, 0)]


def test_rank_zero_waits_for_the_followers_acks_a_bounded_time(tmp_path: Path) -> None:
    leader = ranks.Leader(DistEnv(rank=0, world=3), tmp_path)
    (tmp_path / "ack-1").touch()
    started = time.monotonic()
    leader.end(None, wait_s=0.5)  # rank 2 never acks: rank 0 goes on after the wait
    assert 0.4 < time.monotonic() - started < 5
    (tmp_path / "ack-2").touch()
    started = time.monotonic()
    leader.end(None, wait_s=30)  # both acked: no wait
    assert time.monotonic() - started < 5
