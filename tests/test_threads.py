"""Threads from the CPU quota (esgd.worker.threads), --threads and $ESGD_THREADS, and the worker's
start line. torch's thread pools are never resized in this process (other tests' numbers depend on
them): configure_threads's effect is checked in a subprocess."""

import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from esgd.cli.worker import main as worker
from esgd.cli.worker import parser, start_line
from esgd.controller import local
from esgd.controller.runs import create_or_resume
from esgd.core.errors import InputError
from esgd.core.plan import Step
from esgd.core.spec import parse_spec
from esgd.store.uri import open_store
from esgd.worker.threads import cgroup_cpus, choose_threads, cpu_quota

from helpers import tiny


@pytest.fixture
def cpus(monkeypatch):
    """Pretend this process may run on `n` CPUs (its affinity mask)."""

    def set_cpus(n: int) -> None:
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(n)))

    return set_cpus


def cgroup(tmp_path, files: dict[str, str]):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text + "\n")
    return tmp_path


@pytest.mark.parametrize(
    "files, limit, quota",
    [
        ({"cpu.max": "200000 100000"}, 2.0, 2),  # cgroup v2: 2 CPUs
        ({"cpu.max": "150000 100000"}, 1.5, 2),  # 1.5 CPUs keep 2 threads busy: rounded up
        ({"cpu.max": "50000 100000"}, 0.5, 1),  # at least 1
        ({"cpu.max": "max 100000"}, None, 8),  # no limit: the affinity mask
        ({"cpu/cpu.cfs_quota_us": "100000", "cpu/cpu.cfs_period_us": "100000"}, 1.0, 1),  # cgroup v1
        ({"cpu,cpuacct/cpu.cfs_quota_us": "300000", "cpu,cpuacct/cpu.cfs_period_us": "100000"}, 3.0, 3),
        ({"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"}, None, 8),  # v1: -1 is no limit
        ({}, None, 8),  # no cgroup files at all
        ({"cpu.max": "garbled"}, None, 8),
    ],
)
def test_cpu_quota_is_the_cgroup_limit_within_the_affinity_mask(tmp_path, cpus, files, limit, quota):
    cpus(8)
    root = cgroup(tmp_path, files)
    assert cgroup_cpus(root) == limit
    assert cpu_quota(root) == quota


def test_a_narrow_affinity_mask_wins_over_a_wide_limit(tmp_path, cpus):
    cpus(1)
    assert cpu_quota(cgroup(tmp_path, {"cpu.max": "400000 100000"})) == 1


def test_threads_come_from_the_option_then_the_environment_then_the_quota(monkeypatch, cpus):
    cpus(3)
    monkeypatch.setattr("esgd.worker.threads.cpu_quota", lambda: 3)
    monkeypatch.setenv("ESGD_THREADS", "5")
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    assert choose_threads(2) == 2  # --threads wins
    assert choose_threads() == 5
    monkeypatch.delenv("ESGD_THREADS")
    assert choose_threads() == 7  # OMP_NUM_THREADS, as torch would read it
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert choose_threads() == 3


@pytest.mark.parametrize("value", ["0", "-2", "two", "1.5"])
def test_a_bad_esgd_threads_is_bad_input(monkeypatch, value):
    monkeypatch.setenv("ESGD_THREADS", value)
    with pytest.raises(InputError, match="ESGD_THREADS"):
        choose_threads()
    assert choose_threads(1) == 1  # --threads wins, and then the variable is not read


def test_a_bad_esgd_threads_ends_the_worker_with_one_line_and_exit_2(monkeypatch, capsys):
    monkeypatch.setenv("ESGD_THREADS", "many")
    assert worker(["init", "--run", "/nowhere/runs/r"]) == 2
    assert capsys.readouterr().err == (
        "esgd-worker: error: ESGD_THREADS: expected a positive whole number of threads, got 'many'\n"
    )


def test_the_threads_option(capsys):
    assert parser().parse_args(["init", "--run", "r", "--threads", "3"]).threads == 3
    with pytest.raises(SystemExit) as stop:
        parser().parse_args(["init", "--run", "r", "--threads", "0"])
    assert stop.value.code == 2 and "--threads: expected a positive whole number, got '0'" in capsys.readouterr().err


def test_the_start_line():
    train = Step("train", generation=0, members=(0, 4))
    assert (
        start_line(train, "cpu", "2.13.0+cpu", None, 2)
        == "esgd-worker: train gen=0 members=0..4 on cpu, torch 2.13.0+cpu, no CUDA, 2 threads"
    )
    assert (
        start_line(Step("init"), "cuda:0 (NVIDIA H200)", "2.13.0+cu128", "12.8", 1)
        == "esgd-worker: init on cuda:0 (NVIDIA H200), torch 2.13.0+cu128, CUDA 12.8, 1 thread"
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_a_gpu_this_machine_lacks_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MKL_NUM_THREADS", "1")  # restored after: the worker sets it when unset
    run, _ = create_or_resume(open_store(str(tmp_path / "store")), parse_spec(tiny()), "r")
    assert worker(["train", "--run", run.uri, "--gen", "0", "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert err == "esgd-worker: error: device: cuda requested, but this machine has 0 CUDA device(s)\n"


def test_the_local_gpu_engine_gives_each_worker_its_share_of_the_threads(monkeypatch):
    started = []

    def popen(argv, env):
        started.append((argv, env))
        return SimpleNamespace(wait=lambda: 0, returncode=0)

    monkeypatch.setattr(local.subprocess, "Popen", popen)
    monkeypatch.setattr(local.torch, "get_num_threads", lambda: 5)
    stage = (Step("train", 0, members=(0, 2)), Step("train", 0, members=(2, 4)))
    local.LocalGPUs(["cuda:0", "cuda:1"]).run_stage(SimpleNamespace(uri="/s/runs/r"), stage)
    assert [argv[argv.index("--threads") + 1] for argv, _ in started] == ["2", "2"]
    assert all(env["OMP_NUM_THREADS"] == "2" for _, env in started)


def test_configure_threads_sizes_torch_and_the_environment():
    code = (
        "import os, torch\n"
        "from esgd.worker.threads import configure_threads\n"
        "n = configure_threads()\n"
        "configure_threads()  # a second call: the inter-op pool is sized already, and that is fine\n"
        "print(n, torch.get_num_threads(), torch.get_num_interop_threads(), os.environ['OMP_NUM_THREADS'])\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    done = subprocess.run(
        [sys.executable, "-c", code], env={**env, "ESGD_THREADS": "1"}, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1", "1", "1", "1"]
