"""Small helpers shared by the engine tests: a tiny spec and ways to start, run and read a run back."""

import copy

import yaml

from esgd.cli.main import main
from esgd.controller import local
from esgd.controller.runs import create_or_resume
from esgd.core import keys
from esgd.core.plan import Step, phases
from esgd.core.records import HistoryRow
from esgd.core.spec import parse_spec
from esgd.core.tables import read_table
from esgd.store.uri import open_run, open_store
from esgd.worker.run import Run

TINY = {
    "name": "tiny",
    "seed": 7,
    "task": "esgd.worker.tasks.digits:task",
    "task_args": {"hidden": 8},
    "generations": 3,
    "population": {"mu": 4, "offspring": 4, "rho": 2, "elite": 2},
    "sgd": {"epochs": 2, "batch_size": [64, 128]},
}


def merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def tiny(**extra) -> dict:
    return merge(TINY, extra)


def small(**extra) -> dict:
    """The tiny spec with 2 generations of one epoch at batch size 64: the storage and fault tests'."""
    return tiny(**merge({"generations": 2, "sgd": {"epochs": 1, "batch_size": [64]}}, extra))


def write_spec(path, data: dict) -> str:
    parse_spec(data)  # fail early in the test, not in the CLI
    path.write_text(yaml.safe_dump(data))
    return str(path)


def history(run_uri: str) -> list[dict]:
    store, run_id = open_run(run_uri)
    return read_table(store.get(keys.history(run_id)), HistoryRow).to_pylist()


def run_cli(capsys, *args) -> tuple[int, str, str]:
    """`esgd ARGS` in this process: (exit code, stdout stripped, stderr)."""
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out.strip(), err


def start(store_uri: str, data: dict, run_id: str) -> Run:
    """A created (not yet executed) run of `data`, as a worker on the CPU sees it."""
    run, _ = create_or_resume(open_store(store_uri), parse_spec(data), run_id)
    return Run(run, "cpu")


def execute(run: Run) -> None:
    """Every remaining step of the run, on the CPU, with the local engine (what `esgd run` does)."""
    local.execute(run.ref, "cpu", progress=lambda line: None)


def all_steps(spec, pack: int, shard: int = 2) -> list[Step]:
    """Every step of the plan, in order."""
    return [step for phase in phases(spec, pack, shard) for step in phase.steps()]


def dies_after_commits(store, count: int) -> None:
    """Make store.commit raise KeyboardInterrupt after `count` commits: a step killed between two commits."""
    commit, calls = store.commit, []

    def dies(key, record):
        if len(calls) == count:
            raise KeyboardInterrupt("killed")
        calls.append(key)
        return commit(key, record)

    store.commit = dies
