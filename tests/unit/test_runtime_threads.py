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


# -- the thread governor: fewer threads while other processes want the CPUs ---------------------------------------


class FakeMachine:
    """A clock and a ``(machine, own)`` runnable-threads reading the test sets."""

    def __init__(self) -> None:
        self.now, self.others = 0.0, 0.0

    def clock(self) -> float:
        return self.now

    def read(self) -> tuple[int, int]:
        return 2 + self.others, 2  # type: ignore[return-value]  # a fractional mean, as many readings give


def _window(governor: object, machine: FakeMachine, others: float, samples: int = 10) -> str | None:
    machine.others = others
    for _ in range(samples):
        governor.sample()  # type: ignore[attr-defined]
    machine.now += 5.0
    return governor()  # type: ignore[operator,no-any-return]


def test_governor_drops_to_one_thread_when_busy_and_comes_back_when_free() -> None:
    import torch

    from components.runtime import ThreadGovernor

    machine = FakeMachine()
    before = torch.get_num_threads()
    governor = ThreadGovernor(2, cpus=2, sampler=machine.read, clock=machine.clock)
    try:
        assert _window(governor, machine, 0) is None and governor.threads == 2 == torch.get_num_threads()
        note = _window(governor, machine, 4)  # four other pipelines' threads runnable: the issue's K = 4
        assert governor.threads == 1 == torch.get_num_threads()
        assert note == "1 torch thread (the machine is busy: 4.0 other runnable threads on 2 CPUs)"
        assert _window(governor, machine, 1) is None and governor.threads == 1  # one other thread: 1 + 1 = 2 CPUs
        assert _window(governor, machine, 0.4) is None and governor.threads == 1  # inside the hysteresis band
        note = _window(governor, machine, 0)
        assert governor.threads == 2 == torch.get_num_threads() and note is not None and "free again" in note
        assert _window(governor, machine, 0.4) is None and governor.threads == 2  # the band, from above
        assert _window(governor, machine, 1) is not None and governor.threads == 1
        assert [threads for _, threads, _ in governor.changes] == [1, 2, 1]
    finally:
        torch.set_num_threads(before)


def test_governor_decides_once_per_window_and_not_on_too_few_samples() -> None:
    from components.runtime import ThreadGovernor

    machine = FakeMachine()
    governor = ThreadGovernor(8, cpus=8, sampler=machine.read, clock=machine.clock)
    machine.others = 6
    for _ in range(10):
        governor.sample()
    machine.now += 4.9
    assert governor.decide() is None and governor.threads == 8  # the window is not over
    machine.now += 0.2
    assert governor.decide() is not None and governor.threads == 2  # ceil(8 - 6 - 0.5)
    machine.now += 5.0
    governor.sample()
    assert governor.decide() is None and governor.threads == 2  # one sample decides nothing
    for others, expected in ((0, 8), (3, 5), (2.5, 5)):  # up to floor(free + 0.35), capped; then the band holds
        machine.others = others
        for _ in range(5):
            governor.sample()
        machine.now += 5.0
        governor.decide()
        assert governor.threads == expected, others


def test_runnable_threads_reads_this_machine() -> None:
    from components.runtime import runnable_threads

    reading = runnable_threads()
    assert reading is not None
    machine, own = reading
    assert own >= 1 and machine >= own  # the reading thread itself is running


def test_apply_threads_starts_the_governor_only_for_the_adaptive_count(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from components import runtime

    before = torch.get_num_threads()
    try:
        runtime.apply_threads(1)
        assert runtime.thread_governor() is None  # a number is kept as given
        runtime.apply_threads(None)
        expected = usable_cpus() == os.cpu_count()
        assert (runtime.thread_governor() is not None) == expected
        monkeypatch.setenv("MEDTUNE_ADAPT_THREADS", "0")
        runtime.apply_threads(None)
        assert runtime.thread_governor() is None
    finally:
        runtime.apply_threads(before)


def test_progress_lines_say_when_the_governor_changes_the_count() -> None:
    from pipelines.progress import ProgressLog

    lines: list[str] = []
    notes = iter([None, "1 torch thread (the machine is busy: 3.0 other runnable threads on 2 CPUs)", None])
    log = ProgressLog("base", lines.append, every_seconds=1e9, between_steps=lambda: next(notes))
    log.update("", 0, 10)
    log.update("", 1, 10, 0.5)
    log.update("", 2, 10, 0.4)
    assert [line.split(", t=")[0] for line in lines] == [
        "base: 1 torch thread (the machine is busy: 3.0 other runnable threads on 2 CPUs)"
    ]


def test_a_governor_line_does_not_hold_back_the_next_progress_line() -> None:
    from pipelines.progress import ProgressLog

    now = [0.0]
    lines: list[str] = []
    notes = iter([None, "1 torch thread (the machine is busy: 3.0 other runnable threads on 2 CPUs)"])
    log = ProgressLog(
        "train", lines.append, every_seconds=1.0, clock=lambda: now[0], between_steps=lambda: next(notes, None)
    )
    log.update("stage 2", 0, 6)
    now[0] = 1.5  # a progress line is due at this step, and the governor speaks at the same call
    log.update("stage 2", 1, 6, 0.5)
    assert any(line.startswith("train: stage 2 1/6 steps, loss 0.5000") for line in lines), lines
