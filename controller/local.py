"""The local executor: runs a run's steps on this machine, on every local GPU, else the CPU.

With one device the steps run in this process. With several GPUs the steps of a stage (e.g. the
training packs of a generation) run as `esgd-worker` subprocesses, one device each: the very
commands an Argo workflow runs in pods.
"""

import math
import subprocess
import sys
import time
from typing import Callable

import torch

from esgd.core import keys
from esgd.core.manifest import HISTORY, from_parquet
from esgd.core.metrics import progress_line, summarize
from esgd.core.plan import Step, final_stages, generation_stages
from esgd.store.base import StoreError
from esgd.worker.cli import run_step
from esgd.worker.run import Run


KEEP_WRITTEN = 256 << 20
"""Bytes of checkpoints kept in memory between the steps of a one-process run (Store.keep_written):
the µ + λ checkpoints of a generation, for models up to about 8 MB at µ + λ = 32."""


def local_devices(run: Run) -> list[str]:
    if run.device_name == "auto" and torch.cuda.device_count() > 1:
        return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return [str(run.device)]


def _run_stage(run: Run, stage: list[Step], devices: list[str]) -> None:
    if len(devices) == 1 or len(stage) == 1:
        for step in stage:
            run_step(run, step.command, step.generation, step.round or 0, step.members, step.offspring)
        return
    procs = []
    for i, step in enumerate(stage):
        cmd = [sys.executable, "-m", "esgd.worker", step.command, "--run", run.uri, *step.args(), "--device", devices[i % len(devices)]]
        procs.append((step, subprocess.Popen(cmd)))
    failed = [step for step, proc in procs if proc.wait() != 0]
    if failed:
        raise StoreError(f"worker step failed: {failed[0]}")


def committed_generations(run: Run) -> int:
    """How many generations are committed (the next generation to run)."""
    done = 0
    while done < run.spec.generations and run.store.exists(keys.parents(run.id, done + 1)):
        done += 1
    return done


def generation_summary(run: Run, generation: int) -> dict:
    rows = from_parquet(run.store.get(keys.history_part(run.id, generation)), HISTORY)
    return summarize(rows, run.spec.m)[0]


def split(run: Run, devices: list[str]) -> tuple[int, int]:
    """(individuals per train step, offspring per evaluate step): one step per device."""
    return math.ceil(run.spec.mu / len(devices)), math.ceil(run.spec.population.offspring / len(devices))


def execute(run: Run, progress: Callable[[str], None] = print) -> None:
    """Run (or resume) every remaining step of the run."""
    devices = local_devices(run)
    if len(devices) > 1:
        return _execute(run, devices, progress)
    run.store.keep_written(KEEP_WRITTEN)  # every step in this process: each reads what the one before wrote
    try:
        _execute(run, devices, progress)
    finally:
        run.store.keep_written(0)


def _execute(run: Run, devices: list[str], progress: Callable[[str], None]) -> None:
    spec = run.spec
    pack, shard = split(run, devices)
    _run_stage(run, [Step("init")], devices)
    start = committed_generations(run)
    if start:
        progress(f"resuming after {start} committed generation(s)")
    for generation in range(start, spec.generations):
        began = time.perf_counter()
        for stage in generation_stages(spec, generation, pack, shard):
            _run_stage(run, stage, devices)
        progress(progress_line(generation_summary(run, generation), spec.generations, time.perf_counter() - began))
    for stage in final_stages(spec, pack):
        _run_stage(run, stage, devices)
