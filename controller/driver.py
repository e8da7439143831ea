"""The driver: one loop for every engine. It walks a run's plan (esgd.core.plan), asks the store
which phases are committed, hands each remaining phase to an engine, and reports progress.

An engine runs the stages of a phase and knows nothing of ESGD: it gets steps, each a worker
command with its options (Step.argv), and runs them in this process, in subprocesses on local
GPUs, or as pods of an Argo Workflow. Whether a phase is done is never the engine's word: only
the store's commit marker counts, so an engine may fail, be restarted or run a step twice, and
the run still ends with the same history.
"""

import time
from collections.abc import Callable
from functools import partial
from typing import Protocol, TypeVar

from esgd.core import keys
from esgd.core.errors import RunStopped, RunUnavailable, TransientError
from esgd.core.metrics import progress_line, summarize
from esgd.core.plan import Phase, generation_marker, phases
from esgd.core.records import HistoryRow
from esgd.core.spec import RunSpec
from esgd.core.tables import read_table
from esgd.store.run import RunRef

T = TypeVar("T")


def patiently(
    call: Callable[[], T],
    patience: float,
    sleep: Callable[[float], None],
    log: Callable[[str], None],
    what: str = "",
    give_up: Callable[[TransientError, float], Exception] | None = None,
) -> T:
    """call(), tried again on transient trouble (TransientError) with back-off 1, 2, 4, ... 30 s,
    one line per wait (`what` starts it), for up to `patience` seconds; then the last error is
    raised, or give_up(error, seconds waited)."""
    waited, attempt = 0.0, 0
    while True:
        try:
            return call()
        except TransientError as error:
            if waited >= patience:
                raise (give_up(error, waited) if give_up else error) from None
            delay = min(2**attempt, 30, patience - waited)
            log(f"{what}{error}; trying again in {delay:g} s ({waited:.0f} of {patience:g} s)")
            sleep(delay)
            waited, attempt = waited + delay, attempt + 1


class PhaseFailed(Exception):
    """One attempt of a phase failed (an engine's word, e.g. a Workflow that failed); the driver
    decides whether to try again. `transient`: its steps failed on transient trouble (exit 75)."""

    def __init__(self, message: str, transient: bool = False):
        super().__init__(message)
        self.transient = transient


class Engine(Protocol):
    """Runs phases of a run's plan. docs/architecture.md ("To add X, touch Y") says how to write one."""

    name: str
    """Shown in messages (in-process, local GPUs, Argo, ...)."""
    attempts: int
    """How many times the driver hands a phase to the engine before it stops the run."""

    def split(self, spec: RunSpec) -> tuple[int, int]:
        """(individuals per train or finetune step, offspring per evaluate step): how the plan's
        stages are cut into steps that may run in parallel."""
        ...

    def retry_delay(self, attempt: int) -> float:
        """Seconds the driver waits after failed attempt `attempt` before the next one."""
        ...

    def run_phase(self, run: RunRef, phase: Phase, attempt: int) -> None:
        """Run the phase's stages in order, the steps of a stage in any order or at once; return
        when every step has returned. Raise PhaseFailed for a failed attempt that may be tried
        again; any other exception stops the run as it is."""
        ...


def committed_generations(run: RunRef) -> int:
    """How many generations are committed (the next generation to run)."""
    done = 0
    while done < run.spec.generations and run.store.exists(generation_marker(run.id, done)):
        done += 1
    return done


def generation_summary(run: RunRef, generation: int) -> dict:
    """The per-generation numbers of a committed generation (core.metrics.summarize)."""
    key = keys.history_part(run.id, generation)
    return summarize(read_table(run.store.get(key), HistoryRow, key).to_pylist(), run.spec.m)[0]


class Driver:
    """Drives a run with an engine. `patience`: seconds the driver keeps trying a phase whose
    attempts fail only on transient trouble (every failed step exited 75: the store or an API could
    not be reached); such attempts do not count against engine.attempts, which is for real failures."""

    def __init__(
        self,
        run: RunRef,
        engine: Engine,
        log: Callable[[str], None] = print,
        sleep: Callable[[float], None] = time.sleep,
        patience: float = 0.0,
        observe: Callable[[dict], None] | None = None,
    ):
        """`observe`: given each generation's summary as it is committed (experiment trackers)."""
        self.run, self.engine, self.log, self.sleep, self.patience = run, engine, log, sleep, patience
        self.observe = observe

    def plan(self) -> list[Phase]:
        """Every phase of the run, cut by the engine; the final stages tagged apart when the run was
        extended to its generations (esgd.controller.runs.extend)."""
        extension = keys.extension(self.run.id, self.run.spec.generations)
        extended = self.patiently(lambda: self.run.store.exists(extension), "reading the run's extension")
        return phases(self.run.spec, *self.engine.split(self.run.spec), extended)

    def remaining(self, done: int) -> list[Phase]:
        """The phases after `done` committed generations, in order; the final one unless committed."""
        every = self.plan()
        return [p for p in every if (p.generation >= done if p.generation is not None else not self.committed(p))]

    def committed(self, phase: Phase) -> bool:
        return self.patiently(lambda: self.run.store.exists(phase.marker(self.run.id)), f"reading {phase.name}")

    def patiently(self, read: Callable[[], T], what: str) -> T:
        """read(), tried again while the store cannot be reached, for up to `patience` seconds: an
        outage between two phases is ridden out as one within a phase is."""
        return patiently(read, self.patience, self.sleep, self.log, f"{what}: ")

    def drive(self) -> None:
        """Run every phase not yet committed; raises RunStopped when the run cannot go on."""
        done = self.patiently(lambda: committed_generations(self.run), "reading the committed generations")
        if done:
            self.log(f"resuming after {done} committed generation(s)")
        for phase in self.remaining(done):
            began = time.perf_counter()
            self.complete(phase)
            if phase.generation is not None:
                summary = self.patiently(partial(generation_summary, self.run, phase.generation), "reading the history")
                self.log(progress_line(summary, self.run.spec.generations, time.perf_counter() - began))
                if self.observe is not None:
                    self.observe(summary)
        self.log(f"run {self.run.id} is complete")

    def complete(self, phase: Phase) -> None:
        """Hand `phase` to the engine until the store shows it committed: up to engine.attempts
        failed attempts, plus attempts that failed on transient trouble for up to `patience` seconds."""
        attempt, failed, waited = 0, 0, 0.0
        while True:
            try:
                self.engine.run_phase(self.run, phase, attempt)
                failure = None
            except PhaseFailed as error:
                failure = error
            if self.committed(phase):
                return  # also when the engine says it failed: e.g. a successful Workflow deleted by its TTL
            if failure is None:
                raise RunStopped(
                    f"{self.engine.name} ran {phase.name} but it is not committed in {self.run.uri}: "
                    "do the steps and the driver use the same store?"
                )
            if failure.transient and waited < self.patience:
                delay = min(self.engine.retry_delay(attempt - failed), self.patience - waited)
                left = f"{waited:.0f} of {self.patience:g} s of transient trouble; not counted as a failed attempt"
                self.log(f"{failure}; trying again in {delay:g} s ({left})")
                waited += delay
            else:
                failed += 1
                left = self.engine.attempts - failed
                if not left:
                    stopped = RunUnavailable if failure.transient else RunStopped
                    raise stopped(f"{phase.name} failed {failed} time(s); last: {failure}")
                delay = self.engine.retry_delay(failed - 1)
                self.log(f"{failure}; on to the next attempt ({left} left) in {delay:g} s")
            self.sleep(delay)
            attempt += 1
