"""Small helpers shared by the engine tests: a tiny spec and ways to read a run back."""

import copy

import yaml

from esgd.controller.cli import main
from esgd.controller.runs import create_or_resume
from esgd.core import keys
from esgd.core.manifest import HISTORY, from_parquet
from esgd.core.spec import parse_spec
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


def write_spec(path, data: dict) -> str:
    parse_spec(data)  # fail early in the test, not in the CLI
    path.write_text(yaml.safe_dump(data))
    return str(path)


def history(run_uri: str) -> list[dict]:
    store, run_id = open_run(run_uri)
    return from_parquet(store.get(keys.history(run_id)), HISTORY)


def run_cli(capsys, *args) -> tuple[int, str, str]:
    """`esgd ARGS` in this process: (exit code, stdout stripped, stderr)."""
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out.strip(), err


def start(store_uri: str, data: dict, run_id: str) -> Run:
    """A created (not yet executed) run of `data` on the CPU."""
    store = open_store(store_uri)
    spec = parse_spec(data)
    create_or_resume(store, spec, run_id)
    return Run(store, run_id, spec, "cpu")
