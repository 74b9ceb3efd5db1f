"""The CPUs a process may use (affinity and cgroup quota, on fake cgroup trees), the ``train.threads`` key, and
that the key neither re-trains nor is ignored (issue 17, item 2)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from components.config import ConfigError, load_config
from components.runtime import apply_threads, cgroup_cpu_limit, configure_environment, state_paths, usable_cpus

REPO = Path(__file__).resolve().parents[2]
DEFAULT = REPO / "configs" / "default.yaml"
EIGHT = set(range(8))


def _tree(root: Path, files: dict[str, str], membership: str) -> tuple[Path, Path]:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text + "\n")
    proc = root.parent / "proc-self-cgroup"
    proc.write_text(membership + "\n")
    return root, proc


@pytest.mark.parametrize(
    ("cpu_max", "limit", "cpus"),
    [("200000 100000", 2.0, 2), ("150000 100000", 1.5, 2), ("50000 100000", 0.5, 1), ("max 100000", None, 8)],
)
def test_cgroup_v2_quota_caps_the_affinity(tmp_path: Path, cpu_max: str, limit: float | None, cpus: int) -> None:
    root, proc = _tree(tmp_path / "cg", {"cpu.max": cpu_max}, "0::/")
    assert cgroup_cpu_limit(root, proc) == limit
    assert usable_cpus(root, proc, affinity=EIGHT) == cpus


def test_affinity_caps_a_larger_quota(tmp_path: Path) -> None:
    root, proc = _tree(tmp_path / "cg", {"cpu.max": "400000 100000"}, "0::/")
    assert usable_cpus(root, proc, affinity={3}) == 1


def test_cgroup_v2_tightest_level_wins(tmp_path: Path) -> None:
    files = {"a/cpu.max": "50000 100000", "a/b/cpu.max": "max 100000"}
    root, proc = _tree(tmp_path / "cg", files, "0::/a/b")
    assert cgroup_cpu_limit(root, proc) == 0.5
    assert usable_cpus(root, proc, affinity=EIGHT) == 1


@pytest.mark.parametrize("mount", ["cpu", "cpu,cpuacct"])
def test_cgroup_v1_quota(tmp_path: Path, mount: str) -> None:
    files = {f"{mount}/docker/x/cpu.cfs_quota_us": "300000", f"{mount}/docker/x/cpu.cfs_period_us": "100000"}
    root, proc = _tree(tmp_path / "cg", files, "12:memory:/docker/x\n4:cpu,cpuacct:/docker/x")
    assert cgroup_cpu_limit(root, proc) == 3.0
    assert usable_cpus(root, proc, affinity=EIGHT) == 3


def test_cgroup_v1_unlimited_is_the_affinity(tmp_path: Path) -> None:
    files = {"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"}
    root, proc = _tree(tmp_path / "cg", files, "4:cpu,cpuacct:/")
    assert cgroup_cpu_limit(root, proc) is None
    assert usable_cpus(root, proc, affinity=EIGHT) == 8


@pytest.mark.parametrize("text", ["", "garbage", "0 100000", "100000 0", "-5 100000"])
def test_unreadable_quota_is_no_limit(tmp_path: Path, text: str) -> None:
    root, proc = _tree(tmp_path / "cg", {"cpu.max": text}, "0::/")
    assert cgroup_cpu_limit(root, proc) is None
    assert usable_cpus(root, proc, affinity={0, 1}) == 2


def test_no_cgroup_files_at_all(tmp_path: Path) -> None:
    assert cgroup_cpu_limit(tmp_path / "none", tmp_path / "no-proc-file") is None
    assert usable_cpus(tmp_path / "none", tmp_path / "no-proc-file", affinity={0, 1, 2}) == 3
    assert usable_cpus(tmp_path / "none", tmp_path / "no-proc-file", affinity=set()) == 1


def test_threads_key_defaults_to_the_usable_cpus_and_is_checked() -> None:
    assert load_config(DEFAULT).train.threads is None
    assert load_config(DEFAULT, ["train.threads=3"]).train.threads == 3
    with pytest.raises(ConfigError, match=r"train\.threads"):
        load_config(DEFAULT, ["train.threads=0"])


def test_apply_threads_sets_torch(tmp_path: Path) -> None:
    import torch

    from pipelines.context import Context
    from pipelines.context import apply_threads as apply_for_command

    before = torch.get_num_threads()
    try:  # None first: inter-op threads can be set once per process, and the usable count is torch's own default
        assert apply_threads(None) == usable_cpus() == torch.get_num_threads()
        assert apply_threads(1) == 1 and torch.get_num_threads() == 1
        ctx = Context(tmp_path, None, load_config(DEFAULT, ["train.threads=2"]), DEFAULT)  # type: ignore[arg-type]
        assert apply_for_command(ctx) == {"runtime.cpus": usable_cpus(), "runtime.threads": 2}
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_threads_key_keys_no_work_folder(tmp_path: Path) -> None:
    from pipelines.context import Context
    from pipelines.stages import TRAIN_KEY, _section_hash

    def key(*overrides: str) -> str:
        ctx = Context(tmp_path, None, load_config(DEFAULT, list(overrides)), DEFAULT)  # type: ignore[arg-type]
        return _section_hash(ctx, *TRAIN_KEY, data_version="v")

    assert key("train.threads=1") == key() == key("train.threads=2")
    assert key("train.batch_size=3") != key()  # the key still sees the train section


def test_openmp_threads_spin_briefly_unless_told(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    configure_environment(state_paths(tmp_path))
    assert os.environ["GOMP_SPINCOUNT"] == "1000"  # 300,000 spins stalled the base under load (issue 17)
    monkeypatch.setenv("GOMP_SPINCOUNT", "50")
    configure_environment(state_paths(tmp_path))
    assert os.environ["GOMP_SPINCOUNT"] == "50"
    monkeypatch.delenv("GOMP_SPINCOUNT")
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")  # a user's own policy: no spin count imposed on it
    configure_environment(state_paths(tmp_path))
    assert "GOMP_SPINCOUNT" not in os.environ and os.environ["OMP_WAIT_POLICY"] == "PASSIVE"


def test_the_cli_loads_no_torch_before_the_environment_is_set() -> None:
    import subprocess
    import sys

    code = "import sys, pipelines.cli, pipelines.context; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "False"  # libgomp reads GOMP_SPINCOUNT once, when torch loads it
