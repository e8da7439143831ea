"""`esgd`: run, inspect and report ESGD runs."""

import argparse
import json
import sys
from pathlib import Path

from esgd.core.errors import InputError
from esgd.core.spec import dump_spec, json_schema, load_spec, read_spec
from esgd.store.base import StoreError
from esgd.store.uri import open_run, open_store, run_uri


def _run(args) -> int:
    from esgd.controller.local import execute
    from esgd.controller.runs import create_or_resume
    from esgd.worker.run import Run

    spec = read_spec(args.spec, args.set)
    store = open_store(args.store)
    run_id, resumed = create_or_resume(store, spec, args.run_id, args.device)
    uri = run_uri(store, run_id)
    print(f"{'resuming' if resumed else 'starting'} {uri} (mode {spec.mode}, µ={spec.mu}, K={spec.generations})", file=sys.stderr)
    execute(Run(store, run_id, spec, args.device), progress=lambda line: print(line, file=sys.stderr, flush=True))
    print(uri)
    return 0


def _spec(args) -> int:
    if args.schema:
        print(json.dumps(json_schema(), indent=2))
        return 0
    spec = read_spec(args.file, args.set) if args.file else load_spec("{}", args.set or [])
    print(dump_spec(spec), end="")
    return 0


def _report(args) -> int:
    from esgd.controller.report import json_lines, load, plots

    store, run_id = open_run(args.run)
    _, summaries, final = load(store, run_id)
    if args.json:
        print(json_lines(summaries))
        return 0
    out = Path(args.out or f"esgd-report-{run_id}")
    for path in plots(summaries, out, run_id):
        print(path)
    last = summaries[-1]
    print(f"generations {len(summaries)}  best {last['best']:.4f}  top15 [{last['top15'][0]:.4f}, {last['top15'][1]:.4f}]", file=sys.stderr)
    if final:
        metric = "" if final["metric"] is None else f"  {final['metric_name']} {final['metric']:.4f}"
        print(f"best individual {final['best_member']}  fitness {final['best_fitness']:.4f}{metric}", file=sys.stderr)
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="esgd", description="Evolutionary Stochastic Gradient Descent.")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run or resume a run; prints the run's URI")
    run.add_argument("spec", help="run spec (YAML)")
    run.add_argument("--store", help="store URI: a local directory (default ./esgd-runs or $ESGD_STORE) or s3://bucket/prefix")
    run.add_argument("--run-id", help="run id; an existing id resumes (default: name plus a hash of the spec)")
    run.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a spec field, e.g. --set population.mu=16")
    run.add_argument("--device", help="override the spec's device (auto, cpu, cuda, cuda:N)")
    run.set_defaults(handler=_run)

    spec = sub.add_parser("spec", help="print the resolved spec, or its JSON schema")
    spec.add_argument("file", nargs="?", help="spec to resolve (default: all defaults)")
    spec.add_argument("--schema", action="store_true", help="print the JSON schema of the run spec")
    spec.add_argument("--set", action="append", metavar="KEY=VALUE")
    spec.set_defaults(handler=_spec)

    report = sub.add_parser("report", help="plots (PNG) or per-generation JSON of a run")
    report.add_argument("run", help="run URI, as printed by `esgd run`")
    report.add_argument("--out", help="folder for the PNG plots (default esgd-report-<run-id>)")
    report.add_argument("--json", action="store_true", help="print one JSON object per generation instead")
    report.set_defaults(handler=_report)

    from esgd.controller.cluster_cli import add_parsers  # compile, controller (Kubernetes)

    add_parsers(sub)

    from esgd.controller.recipes_cli import register  # data import, compare, lineage, replay

    register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.handler(args)
    except (InputError, StoreError) as error:
        print(f"esgd: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # an output path that cannot be written (--out, -o, --dot, ...)
        print(f"esgd: error: {error.filename or ''}: {error.strerror or error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("esgd: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


def entry() -> None:
    """The `esgd` console script (exits without interpreter teardown: see esgd.worker.cli.exit_after)."""
    from esgd.worker.cli import exit_after

    exit_after(main)
