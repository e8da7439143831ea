"""`esgd export`: an individual's weights as safetensors, plus its lineage as JSON (esgd.analysis.export)."""

from pathlib import Path

from esgd.cli.options import log


def _export(args) -> int:
    from esgd.analysis.export import export
    from esgd.store.uri import open_run

    store, run_id = open_run(args.run)
    weights, summary, source = export(store, run_id, args.member, Path(args.out))
    what = "the winner" if source.winner else f"as stored by its {source.role} step in generation {source.generation}"
    log(f"{source.member} ({what}), fitness {source.fitness:.4f}")
    print(weights)
    print(summary)
    return 0


def add_parsers(sub) -> None:
    """Add `export` to the `esgd` subcommands."""
    exp = sub.add_parser(
        "export",
        help="write an individual's weights as safetensors, and its lineage as JSON beside them",
        description="Write the weights of the run's best individual (or of MEMBER) as safetensors, loadable "
        "without esgd (from safetensors.torch import load_file; model.load_state_dict(load_file(FILE))), "
        "the stored checkpoint's checksum checked first; FILE with the suffix .json gets the member's "
        "fitness, task, spec and lineage (the optimizers and hyper-parameters it was trained with).",
    )
    exp.add_argument("run", help="run URI, as printed by `esgd run`")
    exp.add_argument("member", nargs="?", help="member id (default: the run's best individual)")
    exp.add_argument("--out", required=True, metavar="FILE", help="the weights file to write, e.g. winner.safetensors")
    exp.set_defaults(handler=_export)
