"""`esgd`: run, inspect and report ESGD runs. The commands of the paper's experiments live in
esgd.cli.experiments, the cluster commands in esgd.cli.cluster; each module adds its own."""

import argparse
import json
import sys
from pathlib import Path

from esgd.cli import cluster, experiments, export, verify
from esgd.cli.options import DEVICE, RUN_ID, SET, STORE, THREADS, exit_after, log, run_main
from esgd.cli.progress import Bar
from esgd.core.spec import dump_spec, json_schema, load_spec, read_spec
from esgd.store.uri import open_run


def _run(args) -> int:
    import esgd

    spec = read_spec(args.spec, args.set)  # a bad spec is one line before torch is even imported
    bar = Bar()  # on a terminal: a bar per generation under the progress lines
    run = esgd.run(
        spec, args.store, args.run_id, args.device, args.threads, progress=bar.line, on_step=bar.step, track=args.track
    )
    print(run.uri)
    return 0


def _spec(args) -> int:
    if args.schema:
        text = json.dumps(json_schema(), indent=2, ensure_ascii=False)  # σ, µ as they are written
        try:
            text.encode(sys.stdout.encoding or "utf-8")
        except (UnicodeEncodeError, LookupError):  # a terminal that cannot show them: escaped, still JSON
            text = json.dumps(json_schema(), indent=2)
        print(text)
        return 0
    spec = read_spec(args.file, args.set) if args.file else load_spec("{}", args.set or [])
    print(dump_spec(spec), end="")
    return 0


def _report(args) -> int:
    from esgd.analysis.report import json_lines, open_report, output_dir, plots, unfinished
    from esgd.core.metrics import band_label

    store, run_id = open_run(args.run)
    spec, _, summaries, final = open_report(store, run_id)
    note = unfinished(spec, summaries, final)
    if args.json:
        print(json_lines(summaries))
        if note:
            log(note)
        return 0
    out = output_dir(Path(args.out or f"esgd-report-{run_id}"))
    for path in plots(summaries, out, run_id, spec.mu):
        print(path)
    last = summaries[-1]
    band = f"[best, {band_label([spec.mu])}] [{last['top15'][0]:.4f}, {last['top15'][1]:.4f}]"
    span = f"0..{spec.generations - 1}"
    when = (
        f"after generations {span} and fine-tuning"
        if last["phase"] == "finetune"
        else f"generation {last['generation']} of {span}"
    )
    log(f"{when}: best {last['best']:.4f}  {band}")
    if final:
        metric = "" if final.metric is None else f"  {final.metric_name} {final.metric:.4f}"
        log(f"best individual {final.best_member}  fitness {final.best_fitness:.4f}{metric}")
        if final.test_fitness is not None:
            tested = "" if final.test_metric is None else f"  {final.metric_name} {final.test_metric:.4f}"
            log(f"on the task's test set (never trained or selected on): loss {final.test_fitness:.4f}{tested}")
    if note:
        log(note)
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="esgd", description="Evolutionary Stochastic Gradient Descent.")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser(
        "run", parents=[STORE, RUN_ID, SET, DEVICE, THREADS], help="run or resume a run; prints the run's URI"
    )
    run.add_argument("spec", help="run spec (YAML)")
    run.add_argument(
        "--track",
        action="append",
        default=[],
        metavar="KIND:WHERE",
        help="log to an experiment tracker: tensorboard:DIR or mlflow:URI (repeatable; docs/tracking.md)",
    )
    run.set_defaults(handler=_run)

    spec = sub.add_parser("spec", parents=[SET], help="print the resolved spec, or its JSON schema")
    spec.add_argument("file", nargs="?", help="spec to resolve (default: all defaults)")
    spec.add_argument("--schema", action="store_true", help="print the JSON schema of the run spec")
    spec.set_defaults(handler=_spec)

    report = sub.add_parser("report", help="plots (PNG) or per-generation JSON of a run")
    report.add_argument("run", help="run URI, as printed by `esgd run`")
    report.add_argument("--out", help="folder for the PNG plots, made if missing (default esgd-report-<run-id>)")
    report.add_argument("--json", action="store_true", help="print one JSON object per generation instead")
    report.set_defaults(handler=_report)

    cluster.add_parsers(sub)  # compile, controller, cluster-check
    experiments.add_parsers(sub)  # data import, compare, lineage, replay
    verify.add_parsers(sub)  # verify
    export.add_parsers(sub)  # export
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return run_main("esgd", lambda: args.handler(args))


def entry() -> None:
    """The `esgd` console script (exits without interpreter teardown: see options.exit_after)."""
    exit_after(main)
