"""The local engines: a run on this machine, on every local GPU, else the CPU.

InProcess runs every step in this process, one after the other, and keeps what the steps write
for the steps after them to read back. LocalGPUs runs the steps of a stage (e.g. the training
packs of a generation) as `esgd-worker` subprocesses, one device each: the very commands an Argo
Workflow runs in pods.
"""

import math
import os
import subprocess
import sys
from collections.abc import Callable

import torch

from esgd.controller.driver import Driver, Engine, PhaseFailed
from esgd.core import keys
from esgd.core.errors import TRANSIENT_EXIT
from esgd.core.plan import Phase, Step, generation_marker
from esgd.core.spec import RunSpec
from esgd.store.run import RunRef
from esgd.worker import steps
from esgd.worker.run import Run
from esgd.worker.transfers import Transfers

KEEP = 256 << 20
"""Bytes of checkpoints an in-process run keeps in memory between its steps (esgd.store.blobs.Kept):
the µ + λ checkpoints of a generation, for models up to about 8 MB at µ + λ = 32."""


class InProcess:
    """Every step in this process, one after the other, on one device."""

    name = "the in-process engine"
    attempts = 1  # a failing step raises its own error: trying again in this process would fail the same way

    def __init__(self, device: str | None = None, keep: int = KEEP, transfers: Transfers | None = None):
        """`keep`: bytes of checkpoints kept between steps; `transfers`: objects a step moves at
        once (default: what suits the run's store, Transfers.for_store)."""
        self.device, self.keep, self.transfers = device, keep, transfers
        self._runs: dict[str, Run] = {}  # run URI -> the worker's view (task and data loaded once)

    def split(self, spec: RunSpec) -> tuple[int, int]:
        return spec.mu, spec.population.offspring

    def retry_delay(self, attempt: int) -> float:
        return 0.0  # one attempt: never asked

    def worker(self, ref: RunRef) -> Run:
        if ref.uri not in self._runs:
            self._runs[ref.uri] = Run(ref, self.device, self.keep, self.transfers)
        return self._runs[ref.uri]

    on_step: Callable[[Phase, Step, int, int], None] | None = None
    """Told (phase, step, steps done, steps in all) as each stage starts: a terminal's progress bar."""

    def run_phase(self, run: RunRef, phase: Phase, attempt: int) -> None:
        done, total = 0, len(phase.steps())
        for stage in phase.stages:
            if self.on_step is not None:
                self.on_step(phase, stage[0], done, total)
            self.run_stage(run, stage)
            done += len(stage)

    def run_stage(self, run: RunRef, stage: tuple[Step, ...]) -> None:
        for step in stage:
            steps.run(self.worker(run), step)


class LocalGPUs(InProcess):
    """The steps of a stage as subprocesses, one per local GPU (a stage of one step in this process)."""

    name = "the local GPU engine"

    def __init__(self, devices: list[str]):
        super().__init__(devices[0], keep=0)  # the subprocesses write what this process reads
        self.devices = devices

    def split(self, spec: RunSpec) -> tuple[int, int]:
        """One step per device."""
        return math.ceil(spec.mu / len(self.devices)), math.ceil(spec.population.offspring / len(self.devices))

    def run_stage(self, run: RunRef, stage: tuple[Step, ...]) -> None:
        if len(stage) == 1:
            return super().run_stage(run, stage)
        # Each worker gets its share of this process's threads (sized by configure_threads): one
        # per device, each with all of them, would outnumber the CPUs and spin against each other.
        threads = str(max(1, torch.get_num_threads() // len(self.devices)))
        env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
        procs = []
        for i, step in enumerate(stage):
            device = self.devices[i % len(self.devices)]
            argv = [*step.argv(run.uri), "--device", device, "--threads", threads]
            procs.append((argv, subprocess.Popen([sys.executable, "-m", "esgd.cli.worker", *argv], env=env)))
        failed = [(argv, proc.returncode) for argv, proc in procs if proc.wait() != 0]
        if failed:  # the worker printed why; the driver stops the run (one attempt: it would fail again)
            argv, code = failed[0]
            message = f"esgd-worker {' '.join(argv)} exited with code {code}"
            raise PhaseFailed(message, transient=all(c == TRANSIENT_EXIT for _, c in failed))


def local_engine(device: str | None) -> Engine:
    """LocalGPUs when `device` is auto (or unset) and this machine has several GPUs, else InProcess."""
    if device in (None, "", "auto") and torch.cuda.device_count() > 1:
        return LocalGPUs([f"cuda:{i}" for i in range(torch.cuda.device_count())])
    return InProcess(device)


def execute(
    run: RunRef,
    device: str | None = None,
    progress: Callable[[str], None] = print,
    on_step: Callable[[Phase, Step, int, int], None] | None = None,
    observe: Callable[[dict], None] | None = None,
) -> None:
    """Run (or resume) every remaining step of the run on this machine. Before a first generation
    (which may take a while: the driver reports each generation as it is committed) one line says
    what is under way; `on_step` hears of each stage as it starts (InProcess.on_step), `observe` of
    each generation's summary as it is committed (Driver)."""
    engine = local_engine(device or run.spec.device)
    engine.on_step = on_step
    if not run.store.exists(generation_marker(run.id, 0)):
        first = f"generation 0 of 0..{run.spec.generations - 1}"
        if run.store.exists(keys.parents(run.id, 0)):
            progress(f"training {first} ({engine.name}) …")
        else:
            progress(f"initialising {run.spec.mu} individual(s), then {first} ({engine.name}) …")
    Driver(run, engine, progress, observe=observe).drive()
