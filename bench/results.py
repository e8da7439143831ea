"""The benchmark suite behind docs/RESULTS.md: ESGD against its baselines on the tasks of TASKS, over
several seeds, with equal per-individual budgets, and the markdown (with its plots) written from
the measurements, never by hand.

  python bench/results.py --out docs/RESULTS.md                       # the full suite (its runs: ~13 min on one core)
  python bench/results.py --out /tmp/r.md --quick                     # 2 tasks, 2 seeds, tiny budgets: a smoke test
  python bench/results.py --out docs/RESULTS.md --tasks iris,parity --modes esgd,population --seeds 3

Every (task, seed, mode) is an ordinary run in the store (`--store`, default ./esgd-runs), made by
esgd.analysis.compare.compare() exactly as `esgd compare` makes it: the same spec and seed for every
mode, only `mode` differs. When a run finishes, its numbers and its measured wall time go to
`results-suite/<run-id>.json` beside the runs, so the same command again skips finished runs and
resumes an interrupted one (the engine resumes a run with the same id). One progress line per run.

Modes (MODES, data-driven): the engine's modes (`mode:` of the spec, pbt included) run as they are;
`tuned-single` is the best of a small lr grid per optimizer family (FULL["tune"] = 3 learning rates
spread log-evenly over each family's range in the spec's pool), each grid point a `single` run with
that fixed optimizer; its cost is the sum of the grid's runs, and the tables say so. A mode that the
installed esgd's spec lacks is refused with one line (exit 2) that says how to leave it out.
"""

import argparse
import json
import math
import shlex
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

from esgd.core.errors import InputError

ROOT = Path(__file__).resolve().parents[1]

# name -> (what it is, task, task_args, spec fields the task needs). The real datasets ship inside
# scikit-learn; the synthetic ones (esgd.worker.tasks.synthetic) are hard for gradient descent.
# wine and iris train on 124 and 105 examples: the default batch sizes (32, 64, 128) would exceed
# that, which the preflight refuses, so they draw from smaller ones.
SMALL_BATCHES = {"sgd": {"batch_size": [16, 32, 64]}, "single": {"batch_size": 32}}
TASKS = {
    "digits": ("8×8 handwritten digits, 10 classes", "esgd.worker.tasks.digits:task", {}, {}),
    "breast-cancer": ("tumours, 30 measurements, 2 classes", "esgd.worker.tasks.toy:task", {}, {}),
    "wine": ("wines, 13 measurements, 3 cultivars", "esgd.worker.tasks.toy:task", {"dataset": "wine"}, SMALL_BATCHES),
    "iris": ("flowers, 4 measurements, 3 species", "esgd.worker.tasks.toy:task", {"dataset": "iris"}, SMALL_BATCHES),
    "checkerboard": (
        "5×5 checkerboard on the square: a high-frequency boundary",
        "esgd.worker.tasks.synthetic:checkerboard",
        {"periods": 5},
        {},
    ),
    "parity": (
        "parity of 4 of 30 random ±1 bits: a plateau",
        "esgd.worker.tasks.synthetic:parity",
        {"bits": 30, "k": 4},
        {},
    ),
    "spirals": (
        "two spirals of 2 turns, deep narrow MLP (6 × 8 units)",
        "esgd.worker.tasks.synthetic:spirals",
        {"turns": 2.0, "hidden": 8, "depth": 6},
        {},
    ),
    "many-classes": (
        "50 Gaussian classes, 12 examples each, in 16 dimensions",
        "esgd.worker.tasks.synthetic:many_classes",
        {"classes": 50, "per_class": 12},
        {},
    ),
}

# mode -> what it is. `engine` modes are `mode:` values of the spec, run as they are.
MODES = {
    "esgd": "ESGD: SGD step with back-off, then recombination, mutation and m-elitist selection",
    "population": "µ models, hyper-parameters drawn once, no interaction",
    "no-evolution": "ESGD without the evolution step (with the default `sgd.hparams: keep`, the population baseline)",
    "single": "one model, the spec's fixed optimizer, lr halved at every back-off",
    "tuned-single": "the best of `single` runs over an lr grid per optimizer family (cost: the whole grid)",
    "pbt": "Population Based Training (the engine's `pbt` mode)",
}
TUNED = "tuned-single"

# Budgets. FULL is what docs/RESULTS.md is made with: the spec's recommended defaults (µ = 8, λ = 8,
# ρ = 2, m = 60 %, Ks = 5, the default optimizer pool and schedules), only K set: 50 epochs per
# individual, as K = 50 generations of Ks = 1 were before the defaults became Ks = 5. It fits the
# ~40-minute goal for the full default run on one core: its 560 runs add up to 753 s (K = 10 × Ks = 5;
# 1698 s at K = 50 × Ks = 1), measured 2 at a time on the 2-core development machine. The store
# grows by about 0.5 GB a seed (every run keeps its checkpoints: `esgd report` and `lineage` read them).
# Seeds 5..9: the knob study (bench/knobs.py) chose the defaults on seeds 0..4 of the same tasks, so
# the suite measures them on seeds that played no part in choosing them (first_seed).
# QUICK is a smoke test, not a result.
FULL = {
    "budget": {"generations": 10, "sgd": {"epochs": 5}},
    "seeds": 5,
    "first_seed": 5,
    "tasks": tuple(TASKS),
    "tune": 3,
}
QUICK = {
    "budget": {"generations": 2, "population": {"mu": 3, "offspring": 3, "rho": 2}, "sgd": {"epochs": 1}},
    "seeds": 2,
    "first_seed": 0,
    "tasks": ("iris", "checkerboard"),
    "tune": 2,
}
STATE = "results-suite"
"""Store prefix of the per-run result files (`<run-id>.json`): what makes a rerun skip a run."""


def merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


TEST = 0.2
"""The fraction of each task's examples kept apart as its test set (the tasks' `test` argument): the
suite's score is the winner's loss there. The fitness set cannot be the score: every population
method selects on it, so its loss rewards selecting hard on a few hundred examples."""


def task_spec(name: str, seed: int, budget: dict):
    """The spec every mode of (task, seed) shares: the recommended defaults, the budget, the task."""
    from esgd.core.spec import parse_spec

    _, task, args, extra = TASKS[name]
    args = {**args, "test": TEST}
    return parse_spec(merge(merge({"name": name, "seed": seed, "task": task, "task_args": args}, budget), extra))


def lr_grid(low: float, high: float, points: int) -> list[float]:
    """`points` learning rates spread evenly on a log scale from low to high (rounded to 3 digits)."""
    if points == 1 or low == high:
        return [float(f"{math.sqrt(low * high):.3g}")]
    return [float(f"{low * (high / low) ** (i / (points - 1)):.3g}") for i in range(points)]


def jobs_for(name: str, seed: int, mode: str, budget: dict, tune: int) -> list[dict]:
    """The runs of one (task, seed, mode): one for an engine mode, the grid for tuned-single. A job
    is plain data (it crosses to worker processes): the spec as JSON, the run's base id and mode."""
    from esgd.analysis.compare import base_run_id

    spec = task_spec(name, seed, budget)
    base = base_run_id(spec)
    head = {"task": name, "seed": seed, "mode": mode}
    if mode != TUNED:
        return [{**head, "spec": spec.model_dump(mode="json"), "base": base, "engine_mode": mode, "point": ""}]
    jobs = []
    for family, ranges in spec.sgd.optimizers.items():
        for i, lr in enumerate(lr_grid(ranges.lr.low, ranges.lr.high, tune)):
            single = {**spec.single.model_dump(mode="json"), "optimizer": family, "lr": lr}
            point = {**spec.model_dump(mode="json"), "single": single}
            name = f"{family} lr {lr:g}"
            jobs.append(
                {**head, "spec": point, "base": f"{base}-tune-{family}-{i}", "engine_mode": "single", "point": name}
            )
    return jobs


def run_id(job: dict) -> str:
    return f"{job['base']}-{job['engine_mode']}"  # how compare() names a mode's run


def run_job(job: dict, store_uri: str | None, device: str | None) -> dict:
    """Run (or resume) one run and measure it; its result, also written to the store."""
    import torch

    from esgd.analysis.compare import compare
    from esgd.core import keys
    from esgd.core.metrics import finite
    from esgd.core.spec import parse_spec
    from esgd.store.uri import open_store

    store = open_store(store_uri)
    resumed = store.exists(keys.spec(run_id(job)))
    began = time.perf_counter()
    (result,) = compare(parse_spec(job["spec"]), store_uri, job["base"], device, (job["engine_mode"],), lambda _: None)
    record = {
        **{k: job[k] for k in ("task", "seed", "mode", "point")},
        "run": result["run"],
        "fitness": result["best"],  # on the fitness set: what the run chose its winner by
        "best": result["test"],  # the score: the winner's loss on the test set, never trained or chosen on
        "metric_name": result["metric_name"],
        "metric": result["test_metric"],
        "epochs": result["epochs"],
        "wall_s": time.perf_counter() - began,
        "resumed": resumed,  # started by an earlier invocation: its wall time is the rest only
        "threads": torch.get_num_threads(),
    }
    store.put(f"{STATE}/{run_id(job)}.json", json.dumps(finite(record), allow_nan=False).encode())
    return record


def finished(store, job: dict) -> dict | None:
    """The stored result of a job's run, if an earlier invocation finished it (None: run it),
    labelled as the job is (the knob study's runs and the suite's share the runs they have in common)."""
    key = f"{STATE}/{run_id(job)}.json"
    if not store.exists(key):
        return None
    try:
        record = json.loads(store.get(key))
    except ValueError:  # damaged: the run is resumed (it is complete: nothing to do) and measured again
        return None
    if "fitness" not in record:  # written by a suite that had no test set: run it again
        return None
    for key in ("best", "fitness"):  # a diverged run: stored as null
        record[key] = math.inf if record[key] is None else record[key]
    return {**record, **{k: job[k] for k in ("task", "seed", "mode", "point")}}


def _start_worker(threads: int, device: str | None) -> None:
    """Size torch's threads, then make one tiny throwaway run (in a temporary store), so that the
    first measured run's wall time is its own, not the seconds torch and the engine take to load
    what they load on first use."""
    import tempfile

    from esgd.analysis.compare import compare
    from esgd.worker.threads import configure_threads

    configure_threads(threads)
    tiny = task_spec("iris", 0, merge(QUICK["budget"], {"generations": 1}))
    with tempfile.TemporaryDirectory() as store:
        compare(tiny, store, "warm-up", device, ("esgd",), lambda _: None)


def run_all(jobs: list[dict], store_uri: str | None, device: str | None, workers: int, threads: int) -> list[dict]:
    """Every job's result, in job order: stored ones read back, the others run, `workers` at once
    (worker processes, `threads` torch threads each); one progress line per run on stderr."""
    from esgd.store.uri import open_store

    store = open_store(store_uri)
    store.check_writable()
    results: list[dict | None] = [finished(store, job) for job in jobs]
    todo = [i for i, r in enumerate(results) if r is None]
    width = len(str(len(jobs)))
    count = iter(range(1, len(jobs) + 1))
    for r in results:
        if r is not None:
            progress(next(count), len(jobs), width, r, "finished earlier")
    if workers == 1 or len(todo) <= 1:
        _start_worker(threads, device)
        for i in todo:
            results[i] = run_job(jobs[i], store_uri, device)
            progress(next(count), len(jobs), width, results[i], "resumed" if results[i]["resumed"] else "")
        return results
    # spawn: a forked copy of a process that already runs torch's thread pools can hang
    with ProcessPoolExecutor(workers, get_context("spawn"), _start_worker, (threads, device)) as pool:
        futures = {pool.submit(run_job, jobs[i], store_uri, device): i for i in todo}
        for future in as_completed(futures):
            i = futures[future]
            results[i] = future.result()
            progress(next(count), len(jobs), width, results[i], "resumed" if results[i]["resumed"] else "")
    return results


def progress(n: int, total: int, width: int, r: dict, note: str) -> None:
    point = f" [{r['point']}]" if r["point"] else ""
    metric = f"  {r['metric_name']} {100 * r['metric']:.2f} %" if r["metric"] is not None else ""
    print(
        f"[{n:>{width}}/{total}] {r['task']} seed {r['seed']} {r['mode']}{point}: test loss {r['best']:.4f}{metric}"
        f"  {r['epochs']} individual-epochs  {r['wall_s']:.1f}s{'  (' + note + ')' if note else ''}",
        file=sys.stderr,
        flush=True,
    )


def _names(text: str, known, what: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in known]
    if not names or unknown:
        raise InputError(
            f"--{what}: unknown {what} {', '.join(unknown) or '(none given)'} (choose from {', '.join(known)})"
        )
    return names


def check_modes(modes: tuple[str, ...]) -> None:
    """ESGD is what every comparison is made against; an engine mode must be one the spec knows."""
    from esgd.core.spec import SpecError, parse_spec

    if "esgd" not in modes:
        raise InputError("--modes: must include esgd (every comparison is made against it)")
    for mode in modes:
        if mode == TUNED:
            continue
        try:
            parse_spec({"mode": mode})
        except SpecError:
            raise InputError(
                f"--modes: this esgd has no mode {mode!r} yet (core/spec.py); leave it out, e.g. "
                f"--modes {','.join(m for m in modes if m != mode)}"
            ) from None


class Parser(argparse.ArgumentParser):
    def error(self, message: str):
        """A bad option is one line (no usage block) and exit code 2, as every other refusal here."""
        self.exit(2, f"{self.prog}: error: {message}\n")


def parser() -> argparse.ArgumentParser:
    from esgd.cli.options import DEVICE, STORE, positive  # positive: argparse type, a whole number >= 1

    p = Parser(prog="results.py", parents=[STORE, DEVICE], description=__doc__.split("\n\n")[0].replace("\n", " "))
    p.add_argument("--out", required=True, help="the markdown to write (plots go to results/ beside it)")
    p.add_argument("--quick", action="store_true", help="smoke test: 2 tasks, 2 seeds, tiny budgets (not results)")
    p.add_argument(
        "--seeds", type=positive, metavar="N", help="N seeds: 5..5+N-1 (default 5), with --quick 0..N-1 (default 2)"
    )
    p.add_argument("--tasks", help=f"comma-separated, from {', '.join(TASKS)} (default: all; 2 with --quick)")
    p.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, from {', '.join(MODES)} (default: all)")
    p.add_argument(
        "--jobs", type=positive, default=1, metavar="N", help="runs at once, in worker processes (default 1)"
    )
    p.add_argument("--threads", type=positive, default=1, metavar="N", help="torch threads per run (default 1)")
    return p


def main(argv: list[str] | None = None) -> int:
    from esgd.cli.options import run_main

    args = parser().parse_args(argv)
    return run_main("results.py", lambda: suite(args, argv))


def suite(args, argv: list[str] | None) -> int:
    import results_report

    profile = QUICK if args.quick else FULL
    tasks = _names(args.tasks, TASKS, "tasks") if args.tasks else profile["tasks"]
    modes = _names(args.modes, MODES, "modes")
    check_modes(modes)
    seeds = range(profile["first_seed"], profile["first_seed"] + (args.seeds or profile["seeds"]))
    out = Path(args.out)
    if out.is_dir() or not out.parent.is_dir():
        raise InputError(f"--out: {out} must be a file in an existing folder")
    jobs = [
        j for t in tasks for s in seeds for m in modes for j in jobs_for(t, s, m, profile["budget"], profile["tune"])
    ]
    print(
        f"results.py: {len(jobs)} runs ({len(tasks)} tasks × {len(seeds)} seeds, modes {', '.join(modes)})",
        file=sys.stderr,
    )
    began = time.perf_counter()
    records = run_all(jobs, args.store, args.device, args.jobs, args.threads)
    command = shlex.join(["python", "bench/results.py", *(sys.argv[1:] if argv is None else argv)])
    context = {
        "command": command,
        "quick": args.quick,
        "jobs": args.jobs,
        "threads": args.threads,
        "elapsed_s": time.perf_counter() - began,
        "budget": profile["budget"],
        "tune": profile["tune"],
        "test": TEST,
        "tasks": {t: TASKS[t] for t in tasks},
        "modes": {m: MODES[m] for m in modes},
        "specs": {t: task_spec(t, 0, profile["budget"]) for t in tasks},
        "seeds": list(seeds),
        # the seeds bench/knobs.py chose the defaults on, when these are others
        "chosen_on": list(range(FULL["first_seed"])) if seeds.start >= FULL["first_seed"] else None,
    }
    results_report.write(out, records, context)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
