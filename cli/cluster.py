"""`esgd compile` (Argo Workflow YAML of a phase, or of the launcher), `esgd controller` (drive a run
on a cluster) and `esgd cluster-check` (what `helm test` runs). None of them imports torch or the
task: the run's first pod checks the task (esgd.worker.preflight), where the data is."""

import sys
from pathlib import Path
from urllib.parse import urlparse

from esgd.cli.options import CLUSTER_STORE, RUN_ID, SET, SETTINGS, log
from esgd.core import keys, plan
from esgd.core.spec import RunSpec, SpecError, dump_spec, load_spec, read_spec_text
from esgd.store.base import StoreError
from esgd.store.uri import check_store_uri, store_uri
from esgd.workflows.settings import ClusterSettings, load_settings


def _spec(path: str, overrides: list[str] | None) -> tuple[RunSpec, str]:
    """The spec and the text to ship: the file as written, or the resolved spec when --set is used."""
    text = read_spec_text(path)
    spec = load_spec(text, overrides or [])
    if spec.task.partition(":")[0] == "__main__":  # esgd.run(..., task=function) of a script or notebook
        raise SpecError(
            f"task {spec.task} is defined in a script or notebook (__main__): a pod cannot import it; "
            "move the function into a module that the image installs and name it as package.module:function"
        )
    return spec, (dump_spec(spec) if overrides else text)


def _store(args, required: bool = True, pods: bool = False) -> str | None:
    """The store every pod uses: --store, else $ESGD_STORE (never a local default). Credentials in
    the URI and schemes other than s3:// and local paths are refused without echoing the URI (it
    would go into a Workflow, a log or a terminal as written). `pods`: the URI is written into
    Workflows as it is (esgd compile), so a relative path, which each pod would resolve in its own
    working folder, is refused too."""
    store = store_uri(args.store, local_default=False)
    if not store:
        if not required:
            return None
        raise SpecError("--store is required: the store the pods read and write, e.g. s3://bucket/prefix")
    given = "--store" if args.store else "$ESGD_STORE"
    check_store_uri(store, given)
    parts = urlparse(store)
    if parts.scheme == "" and pods and not store.startswith("/"):
        raise StoreError(
            f"{given} is a relative path: every pod would resolve it in its own working folder; "
            "use s3://bucket/prefix (or an absolute path that every pod mounts)"
        )
    if parts.scheme != "s3":
        log(f"esgd: warning: {store} is not an s3:// URI; every pod must be able to reach it")
    return store.rstrip("/")


def _phase(spec: RunSpec, settings: ClusterSettings, text: str) -> plan.Phase:
    if text == plan.FINAL:
        return plan.final(spec, settings.pack)
    extended = plan.final(spec, settings.pack, extended=True)
    if text == extended.tag:  # the final stages of a run extended to spec.generations
        return extended
    if not text.isdigit():
        raise SpecError(
            f"--generation: expected a generation number, 'final' or {extended.tag!r} (a run extended to "
            f"{spec.generations} generations), got {text!r}"
        )
    return plan.generation(spec, int(text), settings.pack, settings.shard)


def _compile(args) -> int:
    from esgd.controller.runs import default_run_id
    from esgd.workflows.check import hera_problems
    from esgd.workflows.generation import phase_workflow
    from esgd.workflows.launcher import launcher_workflow

    spec, text = _spec(args.spec, args.set)
    settings = load_settings(args.settings)
    store = _store(args, required=args.launcher, pods=True)
    run_id = default_run_id(spec) if args.run_id is None else keys.check_run_id(args.run_id)
    try:
        if args.launcher:
            workflow = launcher_workflow(text, settings, store, run_id)
        else:
            uri = f"{store}/{keys.run(run_id)}" if store else None
            workflow = phase_workflow(_phase(spec, settings, args.generation), settings, uri, run_id, args.attempt)
            if uri is None:
                run_uri = f"<store>/{keys.run(run_id)}"
                log(f"esgd: no --store: give the run URI when submitting: argo submit FILE -p run={run_uri}")
    except ValueError as error:
        raise SpecError(str(error)) from None
    problems = hera_problems(workflow.to_dict())
    if problems:  # a bug in the builder, not in the user's input
        raise AssertionError("generated Workflow does not match Argo's model: " + "; ".join(problems))
    yaml_text = workflow.to_yaml()
    if args.output:
        Path(args.output).write_text(yaml_text)
        log(args.output)
    else:
        sys.stdout.write(yaml_text)
    return 0


def _open_run(args):
    """(RunRef, created?) from a run URI, or from a spec (created in --store, or resumed). The task is
    not loaded here: the init step checks it in the run's first pod."""
    from esgd.controller.runs import create_or_resume
    from esgd.store.run import RunRef
    from esgd.store.uri import open_store

    if f"/{keys.RUNS}/" in args.target and not Path(args.target).is_file():
        return RunRef.open(args.target), False
    spec, _ = _spec(args.target, args.set)
    run, resumed = create_or_resume(open_store(_store(args)), spec, args.run_id)
    return run, not resumed


def _workflows(settings: ClusterSettings):
    from esgd.controller.argo import KubernetesWorkflows

    return KubernetesWorkflows(retry_seconds=settings.outage_seconds, timeout=settings.api_timeout_seconds, log=log)


def _owner(text: str | None, namespace: str):
    """The owner of the generation Workflows (--owner), if it can own them: an ownerReference
    must point into the same namespace."""
    from esgd.controller.argo import pod_namespace
    from esgd.workflows.owner import Owner

    if not text:
        return None
    owner = Owner.parse(text)
    if pod_namespace() not in (None, namespace):
        log(f"esgd: warning: {owner} is in namespace {pod_namespace()}, not {namespace}: it cannot own the Workflows")
        return None
    return owner


def _controller(args) -> int:
    from esgd.controller.argo import ArgoEngine, current_namespace
    from esgd.controller.driver import Driver

    if args.run_id is not None:
        keys.check_run_id(args.run_id)  # before the cluster is asked anything
    settings = load_settings(args.settings)
    if args.namespace:
        settings = settings.model_copy(update={"namespace": args.namespace})
    namespace = current_namespace(settings)
    owner = _owner(args.owner, namespace)
    workflows = _workflows(settings)
    workflows.installed(namespace)  # before anything is created: no CRD, no run
    run, created = _open_run(args)
    log(f"{'starting' if created else 'resuming'} {run.uri} on the cluster (namespace {namespace})")
    engine = ArgoEngine(workflows, settings, namespace, log=log, owner=owner)
    Driver(run, engine, log, patience=settings.outage_seconds).drive()
    print(run.uri)
    return 0


def _cluster_check(args) -> int:
    from esgd.controller.argo import ClusterRunError, cluster_check, current_namespace
    from esgd.store.uri import open_store

    settings = load_settings(args.settings)
    log(f"ok: settings load (image {settings.image})")
    store = _store(args, required=False)
    try:
        cluster_check(_workflows(settings), current_namespace(settings), open_store(store) if store else None, log)
    except ClusterRunError as error:
        log(f"esgd: check failed: {error}")
        return 1
    return 0


def add_parsers(sub) -> None:
    """Add `compile`, `controller` and `cluster-check` to the `esgd` subcommands (declarations of
    the same shape, `duplicates` pairs them: each is the command's documentation)."""
    comp = sub.add_parser(
        "compile",
        parents=[SETTINGS, CLUSTER_STORE, RUN_ID, SET],
        help="write the Argo Workflow of a generation, of the final stages, or of the launcher",
        description="Write Argo Workflow YAML (Argo Workflows v4). Generation 0 starts with init; "
        "`--generation final` is fine-tuning and finish; --launcher is a one-pod Workflow running "
        "`esgd controller`, for `argo submit --wait launcher.yaml`. Without a store, "
        "`argo submit -p run=URI` supplies the run URI (--launcher needs one).",
    )
    comp.add_argument("spec", help="run spec (YAML)")
    comp.add_argument(
        "--generation",
        default="0",
        help="generation number, 'final', or 'final-kNNNN' for a run extended to NNNN generations (default 0)",
    )
    comp.add_argument("--attempt", type=int, default=0, help="attempt number in the Workflow's name (default 0)")
    comp.add_argument("--launcher", action="store_true", help="write the launcher Workflow instead")
    comp.add_argument("-o", "--output", help="write to this file instead of stdout")
    comp.set_defaults(handler=_compile)

    ctl = sub.add_parser(
        "controller",
        parents=[SETTINGS, CLUSTER_STORE, RUN_ID, SET],
        help="run or resume a run on a Kubernetes cluster with Argo Workflows",
        description="Submit each remaining generation as an Argo Workflow, wait for it, advance; "
        "restartable at any moment (it continues from the committed state in the store). "
        "--store, --run-id and --set apply to a spec.",
    )
    ctl.add_argument(
        "target", metavar="SPEC|RUN_URI", help="a run spec (creates or resumes the run in --store) or a run URI"
    )
    ctl.add_argument("--namespace", help="namespace of the Workflows (default: settings, else this pod's)")
    ctl.add_argument(
        "--owner",
        metavar="KIND/NAME/UID",
        help="workflow/NAME/UID or job/NAME/UID: the object running this controller, made owner of the "
        "generation Workflows so that deleting it deletes them (the launcher and the chart pass it)",
    )
    ctl.set_defaults(handler=_controller)

    chk = sub.add_parser(
        "cluster-check",
        parents=[SETTINGS, CLUSTER_STORE],
        help="check settings, Kubernetes permissions and the store (the chart's helm test)",
    )
    chk.set_defaults(handler=_cluster_check)
