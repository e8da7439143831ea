"""`esgd-worker STEP --run URI ...` (also `python -m esgd.cli.worker`): one step of a run.

The local engines and the Argo Workflows' pods run exactly these commands; they pass only the
run's URI and the step's options (esgd.core.plan.Step.options): the generation, the round, and
member or offspring ranges (half-open, `a..b`).
"""

import argparse
import sys

import torch

from esgd.cli.options import DEVICE, THREADS, exit_after, log
from esgd.core.errors import TRANSIENT_EXIT, InputError, TransientError
from esgd.core.plan import COMMANDS, OPTIONS, Step
from esgd.store.base import StoreError
from esgd.worker import steps
from esgd.worker.run import Run
from esgd.worker.threads import configure_threads

HELP = {
    "gen": "generation (train, evolve, evaluate, select)",
    "round": "evolution round (evolve, evaluate, select; default 0)",
    "members": "population slots a..b (train, finetune; default all)",
    "offspring": "offspring a..b (evaluate; default all)",
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="esgd-worker", description="Run one step of an ESGD run against its store.", parents=[DEVICE, THREADS]
    )
    p.add_argument("command", choices=COMMANDS)
    p.add_argument("--run", required=True, help="run URI: <store>/runs/<run-id>")
    for name in OPTIONS:
        p.add_argument(f"--{name}", help=HELP[name])
    return p


def start_line(step: Step, device: str, torch_version: str, cuda: str | None, threads: int) -> str:
    """The line a worker prints when it starts: the step, where it runs and with what, so that a
    pod's log says at once which GPU, build and thread count a slow or failed step had."""
    what = " ".join([step.command, *(f"{name}={value}" for name, value in step.options().items())])
    runtime = f"CUDA {cuda}" if cuda else "no CUDA"
    return f"esgd-worker: {what} on {device}, torch {torch_version}, {runtime}, {threads} thread{'s' * (threads != 1)}"


def _device_text(device: torch.device) -> str:
    """cpu, or cuda:N with the GPU's name."""
    if device.type != "cuda":
        return device.type
    index = torch.cuda.current_device() if device.index is None else device.index
    return f"cuda:{index} ({torch.cuda.get_device_name(index)})"


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        threads = configure_threads(args.threads)  # before any torch work: the inter-op pool is sized once
        step = Step.parse(args.command, {name: getattr(args, name) for name in OPTIONS})
        run = Run.open(args.run, args.device)
        log(start_line(step, _device_text(run.device), torch.__version__, torch.version.cuda, threads))
        steps.run(run, step)
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
