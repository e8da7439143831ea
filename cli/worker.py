"""`esgd-worker STEP --run URI ...` (also `python -m esgd.cli.worker`): one step of a run.

The local engines and the Argo Workflows' pods run exactly these commands; they pass only the
run's URI and the step's options (esgd.core.plan.Step.options): the generation, the round, and
member or offspring ranges (half-open, `a..b`).
"""

import argparse
import sys

from esgd.cli.options import DEVICE, exit_after
from esgd.core.errors import TRANSIENT_EXIT, InputError, TransientError
from esgd.core.plan import COMMANDS, OPTIONS, Step
from esgd.store.base import StoreError
from esgd.worker import steps
from esgd.worker.run import Run

HELP = {
    "gen": "generation (train, evolve, evaluate, select)",
    "round": "evolution round (evolve, evaluate, select; default 0)",
    "members": "population slots a..b (train, finetune; default all)",
    "offspring": "offspring a..b (evaluate; default all)",
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="esgd-worker", description="Run one step of an ESGD run against its store.", parents=[DEVICE]
    )
    p.add_argument("command", choices=COMMANDS)
    p.add_argument("--run", required=True, help="run URI: <store>/runs/<run-id>")
    for name in OPTIONS:
        p.add_argument(f"--{name}", help=HELP[name])
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        step = Step.parse(args.command, {name: getattr(args, name) for name in OPTIONS})
        steps.run(Run.open(args.run, args.device), step)
    except TransientError as error:  # retried: by Argo's retryStrategy, or the engine's next attempt
        print(f"esgd-worker: error: {error} (transient)", file=sys.stderr)
        return TRANSIENT_EXIT
    except (InputError, StoreError) as error:  # bad input: never retried; other failures exit 1, retried
        print(f"esgd-worker: error: {error}", file=sys.stderr)
        return 2
    return 0


def entry() -> None:
    """The `esgd-worker` console script."""
    exit_after(main)


if __name__ == "__main__":
    entry()
