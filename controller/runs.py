"""Creating a run (validated, frozen spec in the store) or resuming an existing one."""

import hashlib
from collections.abc import Callable
from importlib.metadata import version

from esgd.core import keys
from esgd.core.spec import RunSpec, SpecError, dump_spec
from esgd.store.base import Store
from esgd.store.run import RunRef, frozen_spec


def default_run_id(spec: RunSpec) -> str:
    """Name plus a hash of the spec, so running the same spec again resumes the same run."""
    return f"{spec.name}-{hashlib.sha256(dump_spec(spec).encode()).hexdigest()[:8]}"


def _differences(a: RunSpec, b: RunSpec) -> list[str]:
    """The top-level spec fields in which two specs differ."""
    da, db = a.model_dump(mode="json"), b.model_dump(mode="json")
    return [key for key in sorted(set(da) | set(db)) if da.get(key) != db.get(key)]


def create_or_resume(
    store: Store,
    spec: RunSpec,
    run_id: str | None,
    preflight: Callable[[RunSpec], None] | None = None,
) -> tuple[RunRef, bool]:
    """(the run, resumed?). `preflight` checks what can be checked of the spec before anything is
    written (esgd.worker.preflight: the task loads and runs). Raises InputError/StoreError before
    writing anything on bad input."""
    store.check_writable()
    if preflight is not None:
        preflight(spec)
    run_id = run_id or default_run_id(spec)
    key = keys.spec(run_id)
    if store.exists(key):
        frozen = frozen_spec(store, run_id)
        if frozen != spec:
            raise SpecError(
                f"run {run_id} exists with a different spec ({', '.join(_differences(frozen, spec))}); "
                "use another --run-id"
            )
        return RunRef(store, run_id, frozen), True
    text = f"# frozen by esgd {version('esgd')}\n{dump_spec(spec)}"
    if not store.put_if_absent(key, text.encode()):
        return create_or_resume(store, spec, run_id)
    return RunRef(store, run_id, spec), False
