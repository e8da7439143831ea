"""`esgd compile` (Argo Workflow YAML of a generation, of the final stages, or of the launcher) and
`esgd controller` (drive a run on a cluster). Registered in esgd.controller.cli by add_parsers."""

import sys
from pathlib import Path

from esgd.core import keys
from esgd.core.spec import RunSpec, SpecError, dump_spec, load_spec, read_spec_text
from esgd.workflows import names
from esgd.workflows.settings import load_settings


def _spec(path: str, overrides: list[str] | None) -> tuple[RunSpec, str]:
    """The spec and the text to ship: the file as written, or the resolved spec when --set is used."""
    text = read_spec_text(path)
    spec = load_spec(text, overrides or [])
    return spec, (dump_spec(spec) if overrides else text)


def _store(args, required: bool = True) -> str | None:
    import os

    store = args.store or os.environ.get("ESGD_STORE")
    if not store:
        if not required:
            return None
        raise SpecError("--store is required: the store the pods read and write, e.g. s3://bucket/prefix")
    if not store.startswith("s3://"):
        print(f"esgd: warning: {store} is not an s3:// URI; every pod must be able to reach it", file=sys.stderr)
    return store.rstrip("/")


def _phase(text: str) -> int | str:
    if text == names.FINAL:
        return text
    if not text.isdigit():
        raise SpecError(f"--generation: expected a generation number or 'final', got {text!r}")
    return int(text)


def _compile(args) -> int:
    from esgd.controller.runs import default_run_id
    from esgd.workflows.check import hera_problems
    from esgd.workflows.generation import phase_workflow
    from esgd.workflows.launcher import launcher_workflow

    spec, text = _spec(args.spec, args.set)
    settings = load_settings(args.settings)
    store = _store(args, required=args.launcher)
    run_id = args.run_id or default_run_id(spec)
    try:
        if args.launcher:
            workflow = launcher_workflow(text, settings, store, run_id)
        else:
            uri = f"{store}/{keys.run(run_id)}" if store else None
            workflow = phase_workflow(spec, settings, uri, run_id, _phase(args.generation), args.attempt)
            if uri is None:
                print(f"esgd: no --store: give the run URI when submitting: argo submit FILE -p run=<store>/{keys.run(run_id)}",
                      file=sys.stderr)
    except ValueError as error:
        raise SpecError(str(error)) from None
    problems = hera_problems(workflow.to_dict())
    if problems:  # a bug in the builder, not in the user's input
        raise AssertionError("generated Workflow does not match Argo's model: " + "; ".join(problems))
    yaml_text = workflow.to_yaml()
    if args.output:
        Path(args.output).write_text(yaml_text)
        print(args.output, file=sys.stderr)
    else:
        sys.stdout.write(yaml_text)
    return 0


def _open_run(args):
    """(Run, created?) from a run URI, or from a spec (created in --store, or resumed)."""
    from esgd.controller.runs import create_or_resume
    from esgd.store.uri import open_store
    from esgd.worker.run import Run

    if f"/{keys.RUNS}/" in args.target and not Path(args.target).is_file():
        return Run.open(args.target, device="cpu"), False
    spec, _ = _spec(args.target, args.set)
    store = open_store(_store(args))
    run_id, resumed = create_or_resume(store, spec, args.run_id)
    return Run(store, run_id, spec, device="cpu"), not resumed


def _controller(args) -> int:
    from esgd.controller.argo import ClusterRunError, Controller, KubernetesWorkflows, current_namespace

    settings = load_settings(args.settings)
    if args.namespace:
        settings = settings.model_copy(update={"namespace": args.namespace})
    log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    try:
        run, created = _open_run(args)
        log(f"{'starting' if created else 'resuming'} {run.uri} on the cluster (namespace {current_namespace(settings)})")
        Controller(KubernetesWorkflows(), run, settings, current_namespace(settings), log=log).drive()
    except ClusterRunError as error:
        print(f"esgd: run stopped: {error}", file=sys.stderr)
        return 2
    print(run.uri)
    return 0


def _cluster_check(args) -> int:
    from esgd.controller.argo import ClusterRunError, KubernetesWorkflows, cluster_check, current_namespace
    from esgd.store.uri import open_store

    settings = load_settings(args.settings)
    log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    log(f"ok: settings load (image {settings.image})")
    try:
        cluster_check(KubernetesWorkflows(), current_namespace(settings), open_store(args.store) if args.store else None, log)
    except ClusterRunError as error:
        print(f"esgd: check failed: {error}", file=sys.stderr)
        return 1
    return 0


def add_parsers(sub) -> None:
    """Add `compile`, `controller` and `cluster-check` to the `esgd` subcommands."""
    comp = sub.add_parser(
        "compile", help="write the Argo Workflow of a generation, of the final stages, or of the launcher",
        description="Write Argo Workflow YAML (Argo Workflows v4). Generation 0 starts with init; "
        "`--generation final` is fine-tuning and finish; --launcher is a one-pod Workflow running "
        "`esgd controller`, for `argo submit --wait launcher.yaml`.",
    )
    comp.add_argument("spec", help="run spec (YAML)")
    comp.add_argument("--generation", default="0", help="generation number, or 'final' (default 0)")
    comp.add_argument("--attempt", type=int, default=0, help="attempt number in the Workflow's name (default 0)")
    comp.add_argument("--launcher", action="store_true", help="write the launcher Workflow instead")
    comp.add_argument("--settings", help="cluster settings (YAML, see docs/kubernetes.md); default: all defaults")
    comp.add_argument("--store", help="store URI the pods use, e.g. s3://bucket/prefix (default $ESGD_STORE; "
                      "needed for --launcher, else `argo submit -p run=URI` supplies the run URI)")
    comp.add_argument("--run-id", help="run id (default: name plus a hash of the spec, as `esgd run`)")
    comp.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a spec field")
    comp.add_argument("-o", "--output", help="write to this file instead of stdout")
    comp.set_defaults(handler=_compile)

    ctl = sub.add_parser(
        "controller", help="run or resume a run on a Kubernetes cluster with Argo Workflows",
        description="Submit each remaining generation as an Argo Workflow, wait for it, advance; "
        "restartable at any moment (it continues from the committed state in the store).",
    )
    ctl.add_argument("target", metavar="SPEC|RUN_URI", help="a run spec (creates or resumes the run in --store) or a run URI")
    ctl.add_argument("--settings", help="cluster settings (YAML); in the chart: the <release>-settings ConfigMap")
    ctl.add_argument("--store", help="store URI for a spec, e.g. s3://bucket/prefix (default $ESGD_STORE)")
    ctl.add_argument("--run-id", help="run id for a spec (default: name plus a hash of the spec)")
    ctl.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a spec field")
    ctl.add_argument("--namespace", help="namespace of the Workflows (default: settings, else this pod's)")
    ctl.set_defaults(handler=_controller)

    chk = sub.add_parser("cluster-check", help="check settings, Kubernetes permissions and the store (the chart's helm test)")
    chk.add_argument("--settings", help="cluster settings (YAML)")
    chk.add_argument("--store", help="store URI to check for writing, e.g. s3://bucket/prefix")
    chk.set_defaults(handler=_cluster_check)
