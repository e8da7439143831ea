"""Creating a run (validated, frozen spec in the store) or resuming an existing one."""

import hashlib
from importlib.metadata import version

from esgd.core import keys
from esgd.core.spec import RunSpec, SpecError, dump_spec, load_spec
from esgd.store.base import Store, StoreError
from esgd.store.uri import read_uri
from esgd.worker.task import TaskError, load_task


def default_run_id(spec: RunSpec) -> str:
    """Name plus a hash of the spec, so running the same spec again resumes the same run."""
    return f"{spec.name}-{hashlib.sha256(dump_spec(spec).encode()).hexdigest()[:8]}"


def preflight(spec: RunSpec, device: str | None = None) -> None:
    """Check what can be checked before anything is written: the device exists, the task loads
    (import path, arguments, data files), its model runs on two training examples, and the
    checkpoints the spec names are checkpoints of that model. Raises InputError."""
    import torch

    from esgd.store import checkpoint
    from esgd.worker.run import resolve_device
    from esgd.worker.weights import load_into

    resolve_device(device or spec.device)
    task = load_task(spec.task, spec.task_args)
    try:
        with torch.no_grad():
            task.model().eval()(task.train[0][:2])
    except Exception as error:  # noqa: BLE001 - any failure here is the task's, reported as one line
        raise TaskError(f"task: the model of {spec.task} fails on two training examples: {type(error).__name__}: {error}") from None
    for field, path in (("population.init.checkpoint", spec.population.init.checkpoint),
                        ("reference.checkpoint", spec.reference.checkpoint)):
        if path:
            try:
                data = read_uri(path)
            except (OSError, StoreError) as error:
                raise SpecError(f"{field}: cannot read {path}: {getattr(error, 'strerror', None) or error}") from None
            try:
                load_into(task.model(), *checkpoint.decode(data))
            except Exception as error:  # noqa: BLE001 - not an ESGD checkpoint, or another architecture
                raise SpecError(f"{field}: {path} is not a checkpoint of this task's model ({type(error).__name__}: "
                                f"{str(error).splitlines()[0][:200]})") from None


def _differences(a: RunSpec, b: RunSpec, prefix: str = "") -> list[str]:
    out = []
    da, db = a.model_dump(mode="json"), b.model_dump(mode="json")
    for key in sorted(set(da) | set(db)):
        if da.get(key) != db.get(key):
            out.append(prefix + key)
    return out


def create_or_resume(store: Store, spec: RunSpec, run_id: str | None, device: str | None = None) -> tuple[str, bool]:
    """(run id, resumed?). Raises InputError/StoreError before writing anything on bad input."""
    store.check_writable()
    preflight(spec, device)
    run_id = run_id or default_run_id(spec)
    key = keys.spec(run_id)
    if store.exists(key):
        frozen = load_spec(store.get(key).decode())
        if frozen != spec:
            raise SpecError(f"run {run_id} exists with a different spec ({', '.join(_differences(frozen, spec))}); "
                            "use another --run-id")
        return run_id, True
    text = f"# frozen by esgd {version('esgd')}\n{dump_spec(spec)}"
    if not store.put_if_absent(key, text.encode()):
        return create_or_resume(store, spec, run_id, device)
    return run_id, False
