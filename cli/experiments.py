"""`esgd data import`, `esgd compare`, `esgd lineage` and `esgd replay`: the paper's experiments."""

import argparse
from pathlib import Path

from esgd.cli.options import DEVICE, SET, STORE, THREADS, log, status


def _data_import(args) -> int:
    from esgd.worker.data.imports import run_import

    uri, manifest = run_import(args.kind, args.path, args.store, args.name)
    for split, shards in sorted(manifest["splits"].items()):
        log(f"{split}: {sum(s['rows'] for s in shards)} rows in {len(shards)} shard(s)")
    print(uri)
    return 0


def _compare(args) -> int:
    from esgd.analysis.compare import base_run_id, compare, json_lines, parse_modes, plots, table, title, with_mode
    from esgd.analysis.report import output_dir
    from esgd.controller.runs import check_runs
    from esgd.core import keys
    from esgd.core.spec import read_spec
    from esgd.store.uri import open_store

    spec = read_spec(args.spec, args.set)
    modes = parse_modes(args.modes)
    base = base_run_id(spec) if args.run_id is None else keys.check_run_id(args.run_id)
    check_runs(open_store(args.store), {f"{base}-{mode}": with_mode(spec, mode) for mode in modes}, base)
    out = output_dir(Path(args.out or f"esgd-compare-{base}"), make=False)  # a file in its way: said before the runs
    with status("" if args.quiet else "loading torch …"):
        from esgd.worker.threads import configure_threads

        configure_threads(args.threads)  # the four runs' steps run in this process
    results = compare(spec, args.store, base, args.device, modes, progress=(lambda line: None) if args.quiet else log)
    print(json_lines(results) if args.json else table(results, title(spec)))
    for path in plots(results, out, spec.name):
        log(str(path))
    return 0


def _lineage(args) -> int:
    from esgd.analysis.lineage import json_dump, open_lineage, text, to_dot, to_json, to_parquet

    lin, title, _ = open_lineage(args.run, args.member)
    if args.dot:
        Path(args.dot).write_text(to_dot(lin, lin.member))
        log(f"wrote {args.dot}")
    if args.parquet:
        Path(args.parquet).write_bytes(to_parquet(lin))
        log(f"wrote {args.parquet}")
    print(json_dump(to_json(lin)) if args.json else text(lin, title))
    return 0


def _replay(args) -> int:
    from esgd.analysis.lineage import json_dump
    from esgd.analysis.replay import replay, replay_text
    from esgd.analysis.report import run_spec
    from esgd.store import checkpoint
    from esgd.store.run import RunRef
    from esgd.store.uri import open_run
    from esgd.worker.run import Run
    from esgd.worker.train import fitness, metric
    from esgd.worker.weights import to_checkpoint

    store, run_id = open_run(args.run)
    run = Run(RunRef(store, run_id, run_spec(store, run_id)), args.device)  # "no run at URI" if there is none
    steps, model, lin = replay(run, args.member)
    final = steps[-1]["replay_fitness"] if steps else fitness(model, run.task, run.fitness_data)
    value = metric(model, run.task, run.fitness_data, final)
    if args.out:
        Path(args.out).write_bytes(checkpoint.encode(*to_checkpoint(model)))
        log(f"wrote {args.out} (an ESGD checkpoint: usable as population.init.checkpoint or reference.checkpoint)")
    if args.json:
        print(
            json_dump(
                {
                    "member": lin.member,
                    "line": lin.line,
                    "steps": steps,
                    "fitness": steps[-1]["replay_fitness"] if steps else None,
                    "metric_name": run.task.metric_name,
                    "metric": value,
                }
            )
        )
    else:
        print(replay_text(steps, lin, (run.task.metric_name, value)))
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add the subcommands to `esgd`'s subparsers."""
    from esgd.worker.data.imports import KINDS

    data = sub.add_parser("data", help="import a dataset into a store as Parquet shards")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    imp = data_sub.add_parser(
        "import", parents=[STORE], help="convert a dataset to Parquet shards under <store>/data/<name>; prints its URI"
    )
    imp.add_argument("kind", choices=sorted(KINDS), help="cifar10 (python batches), speech (frames), ptb (text)")
    imp.add_argument(
        "path",
        help="the source: cifar-10-python.tar.gz or its folder; a folder with train/valid frames; PTB text folder",
    )
    imp.add_argument("--name", help="dataset name under <store>/data/ (default: the kind)")
    imp.set_defaults(handler=_data_import)

    cmp = sub.add_parser(
        "compare",
        parents=[STORE, SET, DEVICE, THREADS],
        help="run single, population, no-evolution and esgd with the same spec; print Table 1",
    )
    cmp.add_argument("spec", help="run spec (YAML); its mode is replaced by each of the four")
    cmp.add_argument("--run-id", help="base run id; the runs are <base>-<mode> (default: the spec's default run id)")
    cmp.add_argument(
        "--modes",
        help="comma-separated modes of single,population,no-evolution,esgd,pbt (default: the paper's four, "
        "without pbt; a pbt section in the spec, with mode: pbt there, reaches the pbt run only)",
    )
    cmp.add_argument("--out", help="folder for the plots (default esgd-compare-<base>)")
    cmp.add_argument("--json", action="store_true", help="print one JSON object per mode instead of the table")
    cmp.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    cmp.set_defaults(handler=_compare)

    lin = sub.add_parser("lineage", help="an individual's ancestry and the optimizer schedule it followed")
    lin.add_argument("run", help="run URI, as printed by `esgd run`")
    lin.add_argument("member", nargs="?", help="member id (default: the run's best individual)")
    lin.add_argument("--dot", metavar="FILE", help="write the genealogy as GraphViz DOT")
    lin.add_argument("--parquet", metavar="FILE", help="write the ancestry's history rows (plus on_line) as Parquet")
    lin.add_argument("--json", action="store_true", help="print the lineage as one JSON object")
    lin.set_defaults(handler=_lineage)

    rep = sub.add_parser(
        "replay", parents=[DEVICE], help="re-train one model by an individual's optimizer schedule, without evolution"
    )
    rep.add_argument("run", help="run URI, as printed by `esgd run`")
    rep.add_argument("member", nargs="?", help="member id (default: the run's best individual)")
    rep.add_argument("--out", metavar="FILE", help="write the replayed model as an ESGD checkpoint (Arrow IPC)")
    rep.add_argument("--json", action="store_true", help="print the steps as one JSON object")
    rep.set_defaults(handler=_replay)
