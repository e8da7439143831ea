"""`esgd verify RUN_URI [--repair]`: check every object of a run (esgd.analysis.verify), rebuild the
derived files with --repair, and say how to recover the rest. Exit code 0 when the run is healthy
(or repaired), 2 otherwise. No torch, no task: it reads the store only."""

from esgd.store.uri import open_run


def _verify(args) -> int:
    from esgd.analysis.verify import verify

    store, run_id = open_run(args.run)
    outcome = verify(store, run_id, repair=args.repair)
    for finding in outcome.findings:
        print(finding.text)
    print(outcome.summary())
    return 0 if outcome.healthy else 2


def add_parsers(sub) -> None:
    """Add `verify` to the `esgd` subcommands."""
    ver = sub.add_parser(
        "verify",
        help="check every object of a run; --repair rebuilds its derived files",
        description="Check a run's frozen spec, records, manifests, history and checkpoints (checksums, "
        "that each parses, that the run is whole, the final checkpoint). With --repair, rebuild what is "
        "derived (the history parts and history.parquet) from the records that committed it; anything "
        "else damaged or missing is one line saying how to recover. Exit code 0 when the run is healthy "
        "or repaired, 2 otherwise. Run it on a run that is not running.",
    )
    ver.add_argument("run", metavar="RUN_URI", help="run URI, as printed by `esgd run`")
    ver.add_argument("--repair", action="store_true", help="rebuild damaged or missing derived files")
    ver.set_defaults(handler=_verify)
