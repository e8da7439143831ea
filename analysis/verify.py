"""`esgd verify RUN [--repair]`: check every object of a run, rebuild what is derived, and say how to
recover what is not.

Checked: the frozen spec (its checksum, that it loads), every record (checksum, schema), every
manifest and history file (checksum, schema), every checkpoint a record or manifest names (size and
SHA-256, streamed; the final checkpoint named as such), and that the run is whole: each committed
generation has its history part and the records it is made of, history.parquet holds every
committed part, a finished run has its final summary. Checkpoints no record names (the objects of
failed attempts, never read) are counted, not checked.

Derived files (the history parts of committed generations, history.parquet) are rebuilt with
`repair` from the records that committed them (esgd.store.history: the same rows). Anything else
damaged or missing is a problem whose line says how to recover (esgd.core.keys.recovery). No torch:
this reads bytes, records and tables only.
"""

import json
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from esgd.core import keys, tables
from esgd.core.plan import generation_marker
from esgd.core.records import (
    Damaged,
    FinalSummary,
    FitnessRecord,
    HistoryRow,
    InitRecord,
    Member,
    OffspringRecord,
    SchemaError,
    TrainRecord,
    checked_json,
)
from esgd.core.spec import RunSpec, SpecError
from esgd.core.tables import PARTS_KEY, to_parquet
from esgd.store import history
from esgd.store.base import NotFound, Store, StoreError, damaged, recovery
from esgd.store.blobs import Blobs
from esgd.store.run import frozen_spec
from esgd.store.tables import read_rows
from esgd.store.uri import run_uri

RECORDS = {
    "init": InitRecord,
    "reference": InitRecord,
    "train": TrainRecord,
    "offspring": OffspringRecord,
    "fitness": FitnessRecord,
    "finetune": TrainRecord,
    "final-summary": FinalSummary,
}
MANIFESTS = ("parents", "selected", "final-manifest")
READ_SIZE = 4 << 20  # bytes per read of a checkpoint being checked


@dataclass
class Finding:
    """One line of the verification: a problem (damaged, missing, out of date) with how to recover,
    a repair, or a note (nothing to do)."""

    key: str
    text: str
    problem: bool = True
    repaired: bool = False


@dataclass
class Verification:
    uri: str
    findings: list[Finding] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)
    orphans: int = 0
    committed: int | None = None
    generations: int | None = None
    finished: bool = False

    @property
    def problems(self) -> list[Finding]:
        return [f for f in self.findings if f.problem and not f.repaired]

    @property
    def healthy(self) -> bool:
        return not self.problems

    def add(self, key: str, text: str, problem: bool = True, repaired: bool = False) -> None:
        if not any(f.key == key and f.problem for f in self.findings):  # one line per object
            self.findings.append(Finding(key, text, problem, repaired))

    def summary(self) -> str:
        """The last line: what was checked, how far the run is, and the verdict."""
        what = ", ".join(f"{n} {name}" for name, n in self.counts.items() if n)
        orphans = f"; {self.orphans} checkpoint(s) of failed attempts, never read, not checked" if self.orphans else ""
        state = ""
        if self.generations is not None:
            state = f"{self.committed} of {self.generations} generations committed"
            state += ", finished; " if self.finished else "; "
        repaired = sum(f.repaired for f in self.findings)
        if self.problems:
            verdict = f"{len(self.problems)} problem(s), each above with how to recover"
        else:
            verdict = "healthy" + (f" after {repaired} repair(s)" if repaired else "")
        return f"run {self.uri}: {state}checked {what}{orphans}: {verdict}"


def _each(store: Store, fn: Callable, items: Iterable) -> list:
    """fn over items, a few at once on a remote store (its round trips), one by one on a local one."""
    items = list(items)
    if store.objects_at_once <= 1 or len(items) < 2:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(store.objects_at_once) as pool:
        return list(pool.map(fn, items))


class _Reader:
    """Reads each stored object once, keeping what it found (the object, or the error)."""

    def __init__(self, store: Store, present: set[str]):
        self.store, self.present, self.found = store, present, {}

    def load(self, key: str, read: Callable) -> None:
        try:
            self.found[key] = read()
        except (StoreError, SchemaError, SpecError, Damaged) as error:
            self.found[key] = error

    def _get(self, key: str, read: Callable):
        if key not in self.present:
            raise NotFound(f"{self.store.uri.rstrip('/')}/{key} is missing")
        if key not in self.found:
            self.load(key, read)
        value = self.found[key]
        if isinstance(value, Exception):
            raise StoreError(str(value))
        return value

    def record(self, key: str, cls):
        """The record at `key` (as part_rows asks): NotFound if absent, StoreError if unreadable."""
        return self._get(key, lambda: self.store.read(key, cls))

    def members(self, key: str) -> list[Member]:
        """The manifest at `key`, likewise."""
        return self._get(key, lambda: read_rows(self.store, key, Member))


def _was(state: str) -> str:
    """ "is damaged (why)" -> "it was damaged: why", for the line of a repair."""
    head, _, why = state.partition(" (")
    return f"it {head.replace('is ', 'was ', 1)}" + (f": {why.removesuffix(')')}" if why else "")


def _table(store: Store, key: str) -> tuple[object, str | None]:
    """(the history table at `key` or None, what is wrong with it or None): "is missing",
    "is damaged (...)"."""
    try:
        data = store.get(key)
    except NotFound:
        return None, "is missing"
    try:
        return tables.read_table(data, HistoryRow, key), None
    except Damaged as error:
        return None, f"is damaged ({error.reason})"
    except SchemaError as error:
        return None, f"is not a history table ({error})"


def _message(store: Store, key: str, error: Exception) -> str:
    """One line for an object that could not be read."""
    text = str(error)
    if isinstance(error, Damaged):
        return str(damaged(store, error))
    if isinstance(error, SchemaError) and not text.startswith(store.uri):
        return f"{store.uri.rstrip('/')}/{text}"
    return text


def verify(store: Store, run_id: str, repair: bool = False) -> Verification:
    """Check every object of run `run_id`; with `repair`, rebuild the derived files that need it."""
    uri = run_uri(store, run_id)
    found = Verification(uri)
    present = set(store.list(keys.run(run_id)))
    if not present:
        raise StoreError(f"no run at {uri} (`esgd run` prints the URI of each run)")
    reader = _Reader(store, present)
    where = store.uri.rstrip("/")

    spec = _spec(store, run_id, present, found)
    kinds = {key: keys.kind(key) for key in sorted(present)}
    records = [k for k, kind in kinds.items() if kind.name in RECORDS and not kind.checkpoint]
    manifests = [k for k, kind in kinds.items() if kind.name in MANIFESTS]
    _each(store, lambda k: reader.load(k, lambda: store.read(k, RECORDS[kinds[k].name])), records)
    _each(store, lambda k: reader.load(k, lambda: read_rows(store, k, Member)), manifests)
    for key in records + manifests:
        value = reader.found[key]
        if isinstance(value, Exception):
            found.add(key, _message(store, key, value))
    found.counts.update(records=len(records), manifests=len(manifests))
    other = [k for k, kind in kinds.items() if kind.name == "other" and k.endswith(".json")]
    for key in other:  # e.g. an extension's record: its checksum, if it has one
        try:
            checked_json(store.get(key), key)
        except Damaged as error:
            found.add(key, str(damaged(store, error)))
    found.counts.update({"other records": len(other)})

    _checkpoints(store, reader, kinds, found)
    if spec is not None:
        _history(store, run_id, spec, reader, present, found, repair)
    elif any(kind.name in ("history", "history-part") for kind in kinds.values()):
        found.add(
            keys.history(run_id),
            f"{where}/{keys.history(run_id)} and the history parts were not checked: the spec is needed",
        )
    return found


def _spec(store: Store, run_id: str, present: set[str], found: Verification) -> RunSpec | None:
    key = keys.spec(run_id)
    found.counts.update(spec=1)
    if key not in present:
        found.add(key, f"{store.uri.rstrip('/')}/{key} is missing; {recovery(store, key)}")
        return None
    try:
        return frozen_spec(store, run_id)
    except (StoreError, SpecError) as error:
        found.add(key, str(error))
        return None


def _checkpoints(store: Store, reader: _Reader, kinds: dict, found: Verification) -> None:
    """Every checkpoint (and optimizer state) a record or manifest names: size and SHA-256, streamed."""
    refs, named_by, final = {}, {}, None
    for key, value in reader.found.items():
        if isinstance(value, Exception):
            continue
        for item in value if isinstance(value, list) else [value]:
            for ref in (getattr(item, "checkpoint", None), getattr(item, "optimizer_state", None)):
                if ref is not None and ref.key not in refs:
                    refs[ref.key], named_by[ref.key] = ref, key
        if isinstance(value, FinalSummary):
            final = value
    blobs = Blobs(store)

    def check(ref) -> Exception | None:
        try:
            with blobs.open(ref) as stream:
                while stream.read(READ_SIZE):
                    pass
                stream.finish()
        except (StoreError, OSError) as error:
            return error
        return None

    errors = _each(store, check, list(refs.values()))
    where = store.uri.rstrip("/")
    for ref, error in zip(refs.values(), errors):
        if error is None:
            continue
        what = (
            f"the final checkpoint (of the run's best member {final.best_member}): "
            if final and ref.key == final.checkpoint.key
            else ""
        )
        if isinstance(error, NotFound):
            text = f"{what}{where}/{ref.key} is missing (named by {named_by[ref.key]}); {recovery(store, ref.key)}"
        else:
            text = f"{what}{error}"
        found.add(ref.key, text)
    found.counts.update(checkpoints=len(refs))
    found.orphans = sum(1 for key, kind in kinds.items() if kind.checkpoint and key not in refs)


def _history(
    store: Store, run_id: str, spec: RunSpec, reader: _Reader, present: set[str], found: Verification, repair: bool
) -> None:
    """The history parts of committed generations, history.parquet, the final summary."""
    where = store.uri.rstrip("/")
    done = 0
    while done < spec.generations and generation_marker(run_id, done) in present:
        done += 1
    finished = keys.final_manifest(run_id) in present
    found.committed, found.generations, found.finished = done, spec.generations, finished
    expected = list(range(done)) + ([spec.generations] if finished and spec.finetune.epochs > 0 else [])
    parts = sorted(k for k in present if history.part_generation(k) is not None)
    found.counts.update({"history files": len(parts) + (keys.history(run_id) in present)})
    for key in parts:  # parts of generations not committed: their select writes them again
        generation = history.part_generation(key)
        if generation in expected:
            continue
        state = _table(store, key)[1]
        if state:
            note = f"generation {generation} is not committed: resuming the run writes it again"
            found.add(key, f"{where}/{key} {state}; nothing to do ({note})", problem=False)

    rebuilt = False
    for generation in expected:
        key = keys.history_part(run_id, generation)
        missing: list[str] = []

        def record(k, cls, missing=missing):
            try:
                return reader.record(k, cls)
            except NotFound:
                missing.append(k)
                raise

        def members(k, missing=missing):
            try:
                return reader.members(k)
            except NotFound:
                missing.append(k)
                raise

        try:
            rows = history.part_rows(store, run_id, spec, generation, record, members)
        except history.CannotRebuild as error:
            rows, why = None, str(error)
        state = _table(store, key)[1]
        if rows is None:  # the records are not whole: say which, even when the part is intact
            for k in missing:
                found.add(k, f"{where}/{k} is missing: {why.split(':')[0]} without it; {recovery(store, k)}")
            if state:
                last = generation >= spec.generations  # the fine-tuning rows: final/ is made again
                advice = recovery(store, keys.final_record(run_id, "-")) if last else keys.rewind(generation)
                found.add(key, f"{where}/{key} {state} and cannot be rebuilt ({why}); {advice}")
            continue
        if state is None:
            continue
        if repair:
            store.put(key, to_parquet(rows, HistoryRow))
            found.add(key, f"rebuilt {where}/{key} from the records of its generation ({_was(state)})", repaired=True)
            rebuilt = True
        else:
            found.add(key, f"{where}/{key} {state}; {recovery(store, key)}")

    _merged(store, run_id, spec, present, found, expected, rebuilt, repair)
    if finished and keys.final_summary(run_id) not in present:
        key = keys.final_summary(run_id)
        found.add(
            key,
            f"{where}/{key} is missing though final/manifest.parquet commits the final stages; {recovery(store, key)}",
        )


def _merged(
    store: Store,
    run_id: str,
    spec: RunSpec,
    present: set[str],
    found: Verification,
    expected: list[int],
    stale: bool,
    repair: bool,
) -> None:
    """history.parquet: intact, and holding every committed generation's part."""
    key, where = keys.history(run_id), store.uri.rstrip("/")
    table, state = _table(store, key) if key in present or expected else (None, None)
    if table is not None:
        held = json.loads((table.schema.metadata or {}).get(PARTS_KEY) or "null")  # None: an older merge
        lacking = [g for g in expected if held is not None and keys.history_part(run_id, g) not in held]
        if lacking:
            state = f"is out of date (it lacks generation {lacking[0]}'s rows)"
    if state is None and not stale:
        return
    if not repair:
        found.add(key, f"{where}/{key} {state}; {recovery(store, key)}")
        return
    try:
        history.merge(store, run_id, spec, say=lambda *_: None)  # each repair is a line of its own here
    except (StoreError, SchemaError, Damaged) as error:
        found.add(key, f"{where}/{key} {state or 'is out of date'} and could not be merged again: {error}")
        return
    if state is not None:
        found.add(key, f"rebuilt {where}/{key} from the history parts ({_was(state)})", repaired=True)
