"""ESGD from Python: the same engine as the command line (`esgd run` is a thin layer over run()).

    import esgd

    spec = esgd.Spec.from_yaml("examples/digits.yaml", ["generations=4"])
    run = esgd.run(spec, store="esgd-runs")        # resumes, like `esgd run`, when run again
    run.history()                                  # a pyarrow Table, one row per individual and generation
    model = run.best()                             # the winner as the task's nn.Module
    esgd.open_run(run.uri).report("report/")       # plots, like `esgd report`

A task is named by import path (`package.module:function`, docs/tasks.md), the only form a cluster
can import. For runs on this machine, run(..., task=function) also takes the function itself,
defined at the top level of a module, a script or a notebook.

Importing this module is light (no torch): torch and the task load when a run starts, after its
first progress line.
"""

import importlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from esgd.core.errors import InputError
from esgd.core.spec import RunSpec, parse_spec, read_spec

__all__ = ["Run", "Spec", "compare", "open_run", "run", "task_path"]


class Spec(RunSpec):
    """A run spec (docs/method.md; every field has a docstring: `esgd spec --schema`), validated on
    construction: esgd.Spec(name="demo", task="esgd.worker.tasks.digits:task", generations=4).

    >>> spec = Spec.from_yaml("examples/digits.yaml", ["generations=2", "population.mu=10"])
    >>> spec.generations, spec.population.mu, spec.mode
    (2, 10, 'esgd')
    """

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: Sequence[str] = ()) -> "Spec":
        """The spec in a YAML file, with `KEY=VALUE` overrides applied as `--set` applies them.
        SpecError (an InputError) says what is wrong, in one line."""
        return cls.model_validate(read_spec(str(path), list(overrides)).model_dump())


def _spec(spec: RunSpec | dict, **changes) -> RunSpec:
    data = spec.model_dump(mode="json") if isinstance(spec, RunSpec) else dict(spec)
    return parse_spec({**data, **changes})


def task_path(function: Callable) -> str:
    """The import path (`module:function`) of a task function, checked to lead back to it.

    >>> task_path(task_path)
    'esgd:task_path'
    >>> task_path(lambda: None)
    Traceback (most recent call last):
    ...
    esgd.core.errors.InputError: task <lambda> cannot be imported by path: define it at the top level of a module, \
a script or a notebook (not a lambda, a nested function or a method)
    """
    module, name = getattr(function, "__module__", None), getattr(function, "__qualname__", "")
    if not module or not name.isidentifier():
        raise InputError(
            f"task {name or repr(function)} cannot be imported by path: define it at the top level of a module, "
            "a script or a notebook (not a lambda, a nested function or a method)"
        )
    found = getattr(sys.modules.get(module) or importlib.import_module(module), name, None)
    if found is not function:
        raise InputError(f"task {module}:{name} is not what that import path names (redefined?)")
    return f"{module}:{name}"


class Run:
    """A run in a store: its URI, id and frozen spec, and what it made so far."""

    def __init__(self, store, run_id: str):
        from esgd.analysis.report import run_spec

        self.store, self.id = store, run_id
        self.spec: RunSpec = run_spec(store, run_id)  # StoreError when there is no such run

    @property
    def uri(self) -> str:
        from esgd.store.uri import run_uri

        return run_uri(self.store, self.id)

    def __repr__(self) -> str:
        return f"esgd.Run({self.uri!r})"

    def history(self, pandas: bool = False):
        """One row per individual and generation (the columns of esgd.core.records.HistoryRow) as a
        pyarrow Table, or a pandas DataFrame with pandas=True (pandas is not a dependency)."""
        from esgd.store import history

        table = history.read(self.store, self.id, self.spec)
        return table.to_pandas() if pandas else table

    def summaries(self) -> list[dict]:
        """One summary per committed generation: best, elite_mean, mean, top15, offspring_in_elite,
        best_optimizer, backoffs (`esgd report --json`)."""
        from esgd.analysis.report import load

        return load(self.store, self.id)[1]

    def final(self):
        """The FinalSummary (best_member, best_fitness, metric_name, metric), None while unfinished."""
        from esgd.analysis.report import read_final

        return read_final(self.store, self.id)

    def best(self, member: str | None = None, device: str = "cpu"):
        """The winner (or `member`) as the task builds its model, with the weights the run stored;
        for an unfinished run, the best survivor of its last committed generation."""
        from esgd.analysis.export import locate
        from esgd.analysis.report import read_final, read_history
        from esgd.store.run import RunRef
        from esgd.worker.run import Run as Worker

        rows, final = read_history(self.store, self.id), read_final(self.store, self.id)
        source = locate(self.store, self.id, member, rows, final)
        return Worker(RunRef(self.store, self.id, self.spec), device).load_model(source.checkpoint)

    def report(self, out: str | Path) -> list[Path]:
        """The plots of `esgd report` written into the folder `out`; their paths."""
        from esgd.analysis.report import output_dir, plots

        return plots(self.summaries(), output_dir(Path(out)), self.id, self.spec.mu)


def open_run(uri: str) -> Run:
    """The run at a run URI (<store>/runs/<run-id>), as `esgd run` prints it."""
    from esgd.store.uri import open_run as parse

    return Run(*parse(uri))


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def run(
    spec: RunSpec | dict,
    store: str | None = None,
    run_id: str | None = None,
    device: str | None = None,
    threads: int | None = None,
    task: Callable | None = None,
    progress: Callable[[str], None] | None = _stderr,
    on_step: Callable | None = None,
    track: Sequence[str] = (),
) -> Run:
    """Run `spec` on this machine to its end, or resume it (the same spec and run id), or extend it
    (a raised `generations`), exactly as `esgd run` does; the Run. `store`: a local directory or
    s3://bucket/prefix (default ./esgd-runs or $ESGD_STORE); `task`: a task function in place of
    spec.task (for runs on this machine); `progress`: where the progress lines go (default stderr;
    None: nowhere); `on_step(phase, step, done, total)`: told as each stage of a generation starts (a progress bar);
    `track`: experiment trackers, `tensorboard:DIR` or `mlflow:URI` (docs/tracking.md).
    Bad input raises InputError or StoreError, with the one line the command line prints."""
    from esgd.controller.runs import locate
    from esgd.store.uri import open_store, run_uri

    spec = _spec(spec, task=task_path(task)) if task is not None else _spec(spec)
    progress = progress or (lambda line: None)
    where = open_store(store)
    run_id, _ = locate(where, spec, run_id)  # a bad id or another run's id, said at once
    # The run's URI first and at once, so that `esgd report URI` can follow it from another terminal.
    progress(f"run {run_uri(where, run_id)}: loading torch and the task {spec.task} …")
    from esgd.analysis.tracking import open_trackers
    from esgd.controller.local import execute
    from esgd.controller.runs import create_or_resume
    from esgd.worker.preflight import preflight
    from esgd.worker.threads import configure_threads

    trackers = open_trackers(list(track))  # a bad target is one line, before anything is written
    configure_threads(threads)  # before the preflight's first torch work: the steps run in this process
    ref, resumed = create_or_resume(where, spec, run_id, lambda s: preflight(s, device))
    progress(f"{'resuming' if resumed else 'starting'} {ref.uri} (mode {spec.mode}, µ={spec.mu}, K={spec.generations})")
    with trackers:
        trackers.start(ref.uri, spec)
        execute(ref, device, progress=progress, on_step=on_step, observe=trackers.observer(ref))
        trackers.finish(ref)
    return Run(where, run_id)


def compare(
    spec: RunSpec | dict,
    modes: Sequence[str] | None = None,
    store: str | None = None,
    device: str | None = None,
    progress: Callable[[str], None] | None = _stderr,
) -> list[dict]:
    """The modes side by side with the same spec and budget (`esgd compare`): one row per mode of
    the paper's Table 1 (mode, run, best, top15, metric_name, metric, epochs, generations)."""
    from esgd.analysis.compare import MODES, parse_modes
    from esgd.analysis.compare import compare as compare_modes

    chosen = parse_modes(",".join(modes)) if modes else MODES
    return compare_modes(_spec(spec), store, device=device, modes=chosen, progress=progress or (lambda line: None))
