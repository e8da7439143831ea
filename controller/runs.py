"""Creating a run (validated, frozen spec in the store) or resuming an existing one."""

import hashlib
from importlib.metadata import version

from esgd.core import keys
from esgd.core.spec import RunSpec, SpecError, dump_spec, load_spec
from esgd.store.base import Store, StoreError
from esgd.store.uri import read_uri
from esgd.worker.task import load_task


def default_run_id(spec: RunSpec) -> str:
    """Name plus a hash of the spec, so running the same spec again resumes the same run."""
    return f"{spec.name}-{hashlib.sha256(dump_spec(spec).encode()).hexdigest()[:8]}"


def preflight(spec: RunSpec) -> None:
    """Check what can be checked before anything is written: the task loads (import path, data
    files, arguments) and the checkpoint files the spec names can be read."""
    load_task(spec.task, spec.task_args)
    for field, path in (("population.init.checkpoint", spec.population.init.checkpoint),
                        ("reference.checkpoint", spec.reference.checkpoint)):
        if path:
            try:
                read_uri(path)
            except (OSError, StoreError) as error:
                raise SpecError(f"{field}: cannot read {path}: {getattr(error, 'strerror', None) or error}") from None


def _differences(a: RunSpec, b: RunSpec, prefix: str = "") -> list[str]:
    out = []
    da, db = a.model_dump(mode="json"), b.model_dump(mode="json")
    for key in sorted(set(da) | set(db)):
        if da.get(key) != db.get(key):
            out.append(prefix + key)
    return out


def create_or_resume(store: Store, spec: RunSpec, run_id: str | None) -> tuple[str, bool]:
    """(run id, resumed?). Raises SpecError/StoreError before writing anything on bad input."""
    store.check_writable()
    preflight(spec)
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
        return create_or_resume(store, spec, run_id)
    return run_id, False
