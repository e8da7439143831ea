"""How many CPU threads a worker uses: the CPUs this process really has, not the machine's.

torch sizes its thread pools by the cores it sees, which in a container are the node's (64 on a
big node) however small the pod's CPU limit: the threads then outnumber the CPU time the kernel
grants, spin-wait against each other and get throttled. So the worker asks the cgroup and the
affinity mask instead, unless told (`--threads`, $ESGD_THREADS, or $OMP_NUM_THREADS as torch reads it).
"""

import math
import os
from pathlib import Path

from esgd.core.errors import InputError

ENV = "ESGD_THREADS"
INTEROP_MAX = 4  # the inter-op pool serves torch.jit.fork and the like, which the steps barely use


def _read(path: Path) -> list[str] | None:
    try:
        return path.read_text().split()
    except OSError:
        return None


def _limit(quota: str, period: str) -> float | None:
    """CPUs from a CFS quota and period (None: no limit, or not a limit we can read)."""
    try:
        quota_us, period_us = int(quota), int(period)
    except ValueError:
        return None  # "max" (cgroup v2) or a file we do not understand: no limit known
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None  # v1 says -1 for none


def cgroup_cpus(root: str | Path = "/sys/fs/cgroup") -> float | None:
    """The CPU limit of the cgroup mounted at `root` (a container sees its own there), in CPUs, or
    None if there is none: cgroup v2 `cpu.max` ("max 100000", "200000 100000"), else cgroup v1
    `cpu/cpu.cfs_quota_us` and `cpu.cfs_period_us` (-1: no limit)."""
    root = Path(root)
    v2 = _read(root / "cpu.max")
    if v2 is not None:
        return _limit(*v2) if len(v2) == 2 else None
    for folder in ("cpu", "cpu,cpuacct"):  # v1: `cpu` is usually a link to `cpu,cpuacct`
        quota, period = _read(root / folder / "cpu.cfs_quota_us"), _read(root / folder / "cpu.cfs_period_us")
        if quota and period:
            return _limit(quota[0], period[0])
    return None


def cpu_quota(root: str | Path = "/sys/fs/cgroup") -> int:
    """The CPUs this process really has: the fewer of the CPUs it may run on (its affinity mask)
    and its cgroup's CPU limit, rounded up (a limit of 1.5 CPUs keeps 2 threads busy), at least 1."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity masks (macOS)
        cpus = os.cpu_count() or 1
    limit = cgroup_cpus(root)
    if limit is not None:
        cpus = min(cpus, math.ceil(limit))
    return max(1, cpus)


def _from_env(name: str, strict: bool) -> int | None:
    text = os.environ.get(name, "").strip()
    if not text:
        return None
    if text.isdigit() and int(text) > 0:
        return int(text)
    if strict:
        raise InputError(f"{name}: expected a positive whole number of threads, got {text!r}")
    return None  # torch ignores a bad OMP_NUM_THREADS with a warning; so do we, without one


def choose_threads(threads: int | None = None) -> int:
    """The thread count, without setting anything: `threads` if given, else $ESGD_THREADS (an
    InputError if it is not a positive whole number), else $OMP_NUM_THREADS (set by whoever
    started us, and torch would follow it), else cpu_quota()."""
    if threads is not None:
        if threads < 1:
            raise InputError(f"--threads: expected a positive whole number, got {threads}")
        return threads
    return _from_env(ENV, strict=True) or _from_env("OMP_NUM_THREADS", strict=False) or cpu_quota()


def configure_threads(threads: int | None = None) -> int:
    """Size torch's thread pools (choose_threads) and return the intra-op thread count. Call it
    early, once per process: the inter-op pool can be sized only before it first runs work, so a
    later call leaves it as it is. OMP_NUM_THREADS and MKL_NUM_THREADS, when unset, are set too,
    for subprocesses and for libraries loaded later."""
    import torch

    n = choose_threads(threads)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(name, str(n))
    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(min(n, INTEROP_MAX))
    except RuntimeError:  # already sized, or inter-op work has started: only torch's intra-op count changes
        pass
    return n
