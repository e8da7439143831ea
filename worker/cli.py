"""`esgd-worker STEP --run URI ...` (also `python -m esgd.worker`): one step of a run.

The local executor and the Argo workflow pods run exactly these commands; they pass only the run's
URI, the generation, the round and member or offspring ranges (half-open, `a..b`).
"""

import argparse
import os
import sys

from esgd.core.errors import InputError
from esgd.core.plan import parse_range
from esgd.store.base import StoreError
from esgd.worker import steps
from esgd.worker.run import Run

COMMANDS = ("init", "train", "evolve", "evaluate", "select", "finetune", "finish")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="esgd-worker", description="Run one step of an ESGD run against its store.")
    p.add_argument("command", choices=COMMANDS)
    p.add_argument("--run", required=True, help="run URI: <store>/runs/<run-id>")
    p.add_argument("--gen", type=int, help="generation (train, evolve, evaluate, select)")
    p.add_argument("--round", type=int, default=0, help="evolution round (evolve, evaluate, select)")
    p.add_argument("--members", type=parse_range, help="population slots a..b (train, finetune); default all")
    p.add_argument("--offspring", type=parse_range, help="offspring a..b (evaluate); default all")
    p.add_argument("--device", help="torch device; default: the spec's device (auto: a GPU if any)")
    return p


def run_step(run: Run, command: str, gen: int | None, rnd: int, members=None, offspring=None) -> None:
    if command in ("train", "evolve", "evaluate", "select") and gen is None:
        raise InputError(f"{command} needs --gen")
    if gen is not None and not 0 <= gen < run.spec.generations:
        raise InputError(f"--gen {gen} is outside 0..{run.spec.generations - 1}")
    {
        "init": lambda: steps.init(run),
        "train": lambda: steps.train(run, gen, members),
        "evolve": lambda: steps.evolve(run, gen, rnd),
        "evaluate": lambda: steps.evaluate(run, gen, rnd, offspring),
        "select": lambda: steps.select(run, gen, rnd),
        "finetune": lambda: steps.finetune(run, members),
        "finish": lambda: steps.finish(run),
    }[command]()


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        run_step(Run.open(args.run, args.device), args.command, args.gen, args.round, args.members, args.offspring)
    except (InputError, StoreError) as error:
        print(f"esgd-worker: error: {error}", file=sys.stderr)
        return 2
    return 0


def exit_after(main_function) -> None:
    """Run a CLI's main(), then exit without interpreter teardown. Everything is flushed and
    committed by then; skipping teardown avoids a native library's thread pool aborting at exit
    ("terminate called without an active exception", seen about once in a hundred worker runs),
    which would turn a finished step into a failed one."""
    code = main_function()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def entry() -> None:
    """The `esgd-worker` console script."""
    exit_after(main)
