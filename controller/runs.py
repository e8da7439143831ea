"""Creating a run (validated, frozen spec in the store), resuming it, or extending it.

A run id is checked (esgd.core.keys.check_run_id) before anything is read or written. An existing
run is resumed by the same spec, and extended by a spec that differs only in a raised
`generations` (EXTENSIBLE; docs/method.md, "Extending a run"): the committed generations stay as
they are, whatever was made after the last of them (the final stages of a finished run, the steps
of a generation in progress) is removed, and the frozen spec is raised to the new generations
last, so that a crash at any moment leaves a run that the old spec resumes and the new one extends.
Any other difference is refused with one line that suggests a free run id.
"""

import hashlib
import os
import posixpath
import re
from collections.abc import Callable
from importlib.metadata import version

from esgd.controller.driver import committed_generations
from esgd.core import keys
from esgd.core.errors import InputError
from esgd.core.records import ExtensionRecord, encode
from esgd.core.spec import RunSpec, SpecError, dump_spec, identity_text
from esgd.store.base import Store
from esgd.store.history import merge as merge_history
from esgd.store.lock import held
from esgd.store.run import RunRef, frozen_spec, with_checksum

EXTENSIBLE = ("generations",)
"""The spec fields in which a spec may differ from an existing run's frozen spec: `generations`,
raised, extends the run. Every other field either changes what the committed generations were made
with (so the run would no longer be what its spec says) or how the next generations continue from
them (a seed, an operator, µ, the schedules' ends): such a spec needs a run of its own."""

RUN_ID_HINT = "ESGD_RUN_ID_HINT"
"""Environment variable: how the command the user typed sets a run id, `{}` standing for the id
(default `--run-id {}`). `make demo` sets `make demo RUN_ID={}`, so that a refusal suggests what
works for the command used."""


def default_run_id(spec: RunSpec) -> str:
    """Name plus a hash of the spec, so running the same spec again resumes the same run."""
    return f"{spec.name}-{hashlib.sha256(identity_text(spec).encode()).hexdigest()[:8]}"


def _differences(a: RunSpec, b: RunSpec) -> list[str]:
    """The top-level spec fields in which two specs differ."""
    da, db = a.model_dump(mode="json"), b.model_dump(mode="json")
    return [key for key in sorted(set(da) | set(db)) if da.get(key) != db.get(key)]


def suggestion(run_id: str) -> str:
    """How to give the command the user typed this run id ($ESGD_RUN_ID_HINT, else --run-id ID)."""
    return (os.environ.get(RUN_ID_HINT) or "--run-id {}").replace("{}", run_id)


def free_run_id(store: Store, stem: str, suffixes: tuple[str, ...] = ("",)) -> str:
    """An id after `stem` (demo -> demo-2, demo-2 -> demo-3, ...) such that no run <id><suffix>
    exists and each is a valid run id; `suffixes`: how the command builds its runs' ids from the id
    it is given (esgd compare: -<mode>)."""
    numbered = re.fullmatch(r"(.+)-(\d{1,6})", stem)
    head, first = (numbered[1], int(numbered[2]) + 1) if numbered else (stem, 2)
    for n in range(first, first + 100):
        ids = [f"{head}-{n}{suffix}" for suffix in suffixes]
        if all(keys.RUN_ID.fullmatch(i) for i in ids) and not any(store.exists(keys.spec(i)) for i in ids):
            return f"{head}-{n}"
    return "NEW-ID"


def resumable(
    store: Store, spec: RunSpec, run_id: str, stem: str | None = None, suffixes: tuple[str, ...] = ("",)
) -> RunSpec | None:
    """The frozen spec of run `run_id` when `spec` resumes it (the same spec) or extends it (only
    `generations`, raised); None when there is no such run. Reads only: on any other difference a
    SpecError says what differs and suggests a free id (`stem`, `suffixes`: how the command names
    its runs, see free_run_id; default: the run id itself)."""
    if not store.exists(keys.spec(run_id)):
        return None
    frozen = frozen_spec(store, run_id)
    differences = _differences(frozen, spec)
    if not differences or (differences == list(EXTENSIBLE) and spec.generations > frozen.generations):
        return frozen
    another = suggestion(free_run_id(store, stem or run_id, suffixes))
    if differences == list(EXTENSIBLE):
        raise SpecError(
            f"run {run_id} has {frozen.generations} generations: raising `generations` extends a run, "
            f"lowering it is not possible (the spec asks for {spec.generations}); "
            f"to start a new run with this spec: {another}"
        )
    raise SpecError(
        f"run {run_id} exists with a different spec ({', '.join(differences)}); only a raised `generations` "
        f"continues an existing run: to start a new run with this spec, give it another id: {another}"
    )


def check_runs(store: Store, runs: dict[str, RunSpec], stem: str) -> None:
    """For a command that makes several runs from one id (esgd compare: <stem>-<mode>): every run
    id valid, every run new, resumable or extendable, said in one line before the first run starts."""
    keys.check_run_id(stem)
    suffixes = tuple(run_id.removeprefix(stem) for run_id in runs)
    for run_id, suffix in zip(runs, suffixes):
        if not keys.RUN_ID.fullmatch(run_id):  # valid characters: too long with the suffix
            raise InputError(
                f"--run-id: {len(stem)} characters, too long for the runs it names ({len(run_id)} with {suffix}; "
                "a run id has at most 128)"
            )
    for run_id, spec in runs.items():
        resumable(store, spec, run_id, stem, suffixes)


def frozen_text(spec: RunSpec, header: list[str] | None = None) -> str:
    """The stored spec.yaml: a header of comments (default: the package version that froze it; an
    extension adds a line), then the resolved spec."""
    lines = [f"# frozen by esgd {version('esgd')}"] if header is None else header
    return with_checksum(lines, dump_spec(spec))  # esgd.store.run checks it on every read


def locate(store: Store, spec: RunSpec, run_id: str | None) -> tuple[str, RunSpec | None]:
    """(run id, frozen spec or None for a new run) of the run `spec` creates or continues, read
    only and quickly (no torch): an invalid id, a store that cannot be written and another run's
    id are said here, before anything is loaded or written."""
    run_id = default_run_id(spec) if run_id is None else keys.check_run_id(run_id)
    store.check_writable()
    return run_id, resumable(store, spec, run_id)


def create_or_resume(
    store: Store,
    spec: RunSpec,
    run_id: str | None,
    preflight: Callable[[RunSpec], None] | None = None,
) -> tuple[RunRef, bool]:
    """(the run, resumed?): created, resumed, or extended (resumed, with the spec's generations).
    `preflight` checks what can be checked of the spec before anything is written
    (esgd.worker.preflight: the task loads and runs). Raises InputError/StoreError before writing
    anything on bad input: an invalid run id, an existing run with another spec."""
    run_id, frozen = locate(store, spec, run_id)  # a conflict is said before the preflight's minutes
    if preflight is not None:
        preflight(spec)
    if frozen is None:
        if not store.put_if_absent(keys.spec(run_id), frozen_text(spec).encode()):
            return create_or_resume(store, spec, run_id)  # created meanwhile: resume it, or refuse
        return RunRef(store, run_id, spec), False
    if frozen.generations < spec.generations:
        # One extension at a time: another process may be extending (or have extended, and be running
        # the new generations): the frozen spec is read again under the lock.
        with held(store, keys.extension_lock(run_id), f"extending run {run_id}"):
            frozen = resumable(store, spec, run_id)
            if frozen.generations < spec.generations:
                extend(store, run_id, frozen, spec)
    return RunRef(store, run_id, spec), True


def _removal_order(key: str) -> tuple[int, str]:
    """Commit markers and records first, the objects they name last: a crash midway leaves no
    record naming a removed object, so the old spec still resumes the run."""
    return (0 if key.endswith(".parquet") else 1 if key.endswith(".json") else 2), key


def extend(store: Store, run_id: str, frozen: RunSpec, spec: RunSpec) -> int:
    """Raise run `run_id` from frozen.generations to spec.generations (only `generations` differs);
    returns the committed generations it continues from. Run by nothing else at the time (the
    caller holds keys.extension_lock).

    Removed, markers and records before the objects they name: the final stages (final/..., and
    their history part, numbered as generation K), every step of the first uncommitted generation
    (all of gen-<done>/ but its parents manifest, the previous generation's commit), and history
    parts from generation <done> on; then history.parquet is merged again from the parts that
    remain (until then it may hold rows of a removed part: the same rows that resuming the old spec
    writes again).
    Then the extension's record (keys.extension: the final stages to come get Workflow names of
    their own), and last the frozen spec with the new generations. Idempotent: a crash anywhere
    before the last write leaves the run as the old spec resumes it, and the new spec extends it."""
    done = committed_generations(RunRef(store, run_id, frozen))
    final = posixpath.dirname(keys.final_manifest(run_id))
    stale = [k for k in store.list(final) if k != keys.final_manifest(run_id)]
    stale += [k for k in store.list(keys.gen(run_id, done)) if k != keys.parents(run_id, done)]
    kept_parts = [keys.history_part(run_id, g) for g in range(done)]
    parts = store.list(keys.history_parts(run_id))
    stale_parts = [k for k in parts if not any(k.startswith(p) for p in kept_parts)]
    store.delete(keys.final_manifest(run_id))  # the final stages' commit first: from here on they are not done
    for key in sorted(stale, key=_removal_order):
        store.delete(key)
    for key in stale_parts:
        store.delete(key)
    if any(p in parts for p in kept_parts):
        merge_history(store, run_id, frozen)  # held a later part: merged again (a damaged part rebuilt)
    else:
        store.delete(keys.history(run_id))
    note = f"# extended from {frozen.generations} to {spec.generations} generations by esgd {version('esgd')}"
    record = ExtensionRecord(before=frozen.generations, after=spec.generations, committed=done)
    store.put(keys.extension(run_id, spec.generations), encode(record))  # a crashed earlier try's is replaced
    old = store.get(keys.spec(run_id)).decode().splitlines()
    header = [line for line in old if line.startswith(("# frozen by ", "# extended "))]
    store.put(keys.spec(run_id), frozen_text(spec, [*header, note]).encode())
    return done
