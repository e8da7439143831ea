"""The run's history as the store holds it: one part per generation (history/gen-<k>.parquet, written
by the generation's last select; the fine-tuning rows as generation K, written by finish) and
history.parquet, merged from the parts. Both are derived: a part is made of the records and
manifests that committed its generation, so a damaged or lost part of a committed generation is
rebuilt from them (the same rows), and a damaged history.parquet is merged again from its parts.
`merge` (each select and finish) and `read` do that on their own, saying so on stderr;
`esgd verify --repair` does it for a whole run."""

import logging
from collections.abc import Callable

import pyarrow as pa

from esgd.core import keys
from esgd.core.pbt import COPY
from esgd.core.plan import generation_marker, rounds
from esgd.core.records import Damaged, FitnessRecord, HistoryRow, InitRecord, Member, OffspringRecord, TrainRecord
from esgd.core.spec import RunSpec
from esgd.core.tables import merge_parts, read_table, to_parquet
from esgd.store.base import NotFound, Store, StoreError, damaged
from esgd.store.tables import read_rows

log = logging.getLogger(__name__)


class CannotRebuild(StoreError):
    """A history part whose generation is not committed, or whose records are missing or damaged."""


# Rows -------------------------------------------------------------------------------------------------


def trained_row(
    generation: int, role: str, parents: tuple[str, ...], record: TrainRecord, elite: bool, selected: bool
) -> HistoryRow:
    """The row of an individual trained in a generation (role parent) or fine-tuned (finetune)."""
    return HistoryRow(
        generation=generation,
        round=-1,
        member=record.member,
        role=role,
        fitness=record.fitness,
        fitness_before=record.fitness_before,
        elite=elite,
        selected=selected,
        hparams=record.hparams,
        parents=parents,
        sigma=None,
        backoffs=record.backoffs,
        epochs=record.epochs,
    )


def born_row(generation: int, rnd: int, child: Member, sigma: float | None, elite: bool, selected: bool) -> HistoryRow:
    """The row of an offspring (or the reference model, or a PBT copy) at its birth in round `rnd`."""
    return HistoryRow(
        generation=generation,
        round=rnd,
        member=child.member,
        role=child.role,
        fitness=child.fitness,
        fitness_before=None,
        elite=elite,
        selected=selected,
        hparams=child.hparams,  # None but for a PBT copy: the explored hyper-parameters it trains with next
        parents=child.parents,
        sigma=sigma,
        backoffs=0,
        epochs=0,
    )


def generation_rows(
    generation: int,
    parents: list[Member],
    records: list[TrainRecord],
    offspring: list[list[tuple[Member, float | None]]],
    survivors: list[Member],
) -> list[HistoryRow]:
    """Rows of a generation: its parents as trained (`parents` as the generation began, with their
    train records), then every round's offspring; elite and selected say how the last selection
    treated each."""
    selected = {m.member for m in survivors}
    elite = {m.member for m in survivors if m.elite}
    out = [
        trained_row(generation, "parent", parent.parents, record, record.member in elite, record.member in selected)
        for parent, record in zip(parents, records)
    ]
    for rnd, children in enumerate(offspring):
        out += [
            born_row(generation, rnd, child, sigma, child.member in elite, child.member in selected)
            for child, sigma in children
        ]
    return out


def copies(survivors: list[Member]) -> list[list[tuple[Member, None]]]:
    """The PBT copies among a generation's survivors (σ None: a copy is exact), as one round of
    births for generation_rows; none in the other modes. The survivors manifest alone says who
    copied whom, so a history part of pbt is made again from it like any other."""
    made = [(m, None) for m in survivors if m.role == COPY]
    return [made] if made else []


def born(store: Store, run_id: str, spec: RunSpec, generation: int, rnd: int, record: Callable | None = None) -> list:
    """A round's offspring as (Member, σ) from their records, in a generation's first round also
    the reference model (σ None): what the select step saw (esgd.worker.population.offspring)."""
    record = record or store.read
    out = []
    for index in range(spec.population.offspring):
        child = keys.member_id(generation, rnd, index)
        made = record(keys.offspring_record(run_id, generation, rnd, child), OffspringRecord)
        fit = record(keys.fitness_record(run_id, generation, rnd, child), FitnessRecord)
        out.append(offspring_entry(generation, child, made, fit))
    if rnd == 0 and spec.reference.checkpoint:
        out.append(reference_entry(generation, rnd, record(keys.reference(run_id), InitRecord)))
    return out


def offspring_entry(
    generation: int, child: str, made: OffspringRecord, fit: FitnessRecord
) -> tuple[Member, float | None]:
    """An offspring as the select step sees it, from its records: (Member, the σ it was made with)."""
    return Member(child, made.checkpoint, fit.fitness, "offspring", generation, made.parents, False, None), made.sigma


def reference_entry(generation: int, rnd: int, ref: InitRecord) -> tuple[Member, None]:
    """The reference model as an entrant of round `rnd` (σ None: it is inserted unchanged)."""
    member = Member(
        keys.reference_id(generation, rnd), ref.checkpoint, ref.fitness, "reference", generation, (), False, None
    )
    return member, None


def committed(store: Store, run_id: str, spec: RunSpec, generation: int) -> bool:
    """Whether the generation of history part `generation` is committed (K: the final stages)."""
    marker = keys.final_manifest(run_id) if generation >= spec.generations else generation_marker(run_id, generation)
    return store.exists(marker)


def part_rows(
    store: Store,
    run_id: str,
    spec: RunSpec,
    generation: int,
    record: Callable | None = None,
    members: Callable | None = None,
) -> list[HistoryRow]:
    """The rows of history part `generation`, made again from the records and manifests that
    committed it: the same rows its select (or finish) wrote. `record(key, cls)` and `members(key)`
    read them (default: from the store). CannotRebuild when the generation is not committed, or
    one of them is missing or damaged (named)."""
    record = record or store.read
    members = members or (lambda key: read_rows(store, key, Member))
    what = "the fine-tuning rows" if generation >= spec.generations else f"generation {generation}'s history part"
    if not committed(store, run_id, spec, generation):
        raise CannotRebuild(
            f"{what} cannot be made again: the generation is not committed (resuming the run writes it)"
        )
    try:
        if generation >= spec.generations:  # fine-tuning: the final manifest, each member's record
            final = members(keys.final_manifest(run_id))
            return [
                trained_row(
                    generation,
                    "finetune",
                    m.parents,
                    record(keys.final_record(run_id, m.member), TrainRecord),
                    m.elite,
                    True,
                )
                for m in final
            ]
        as_begun = members(keys.parents(run_id, generation))
        survivors = members(keys.parents(run_id, generation + 1))
        records = [record(keys.train_record(run_id, generation, m.member), TrainRecord) for m in as_begun]
        births = (
            [born(store, run_id, spec, generation, r, record) for r in range(rounds(spec))]
            if spec.evolves
            else copies(survivors)
        )
    except StoreError as error:  # missing (NotFound), or damaged: its message says how to recover
        raise CannotRebuild(f"{what} cannot be made again: {error}") from None
    return generation_rows(generation, as_begun, records, births, survivors)


def rebuild_part(store: Store, run_id: str, spec: RunSpec, generation: int) -> None:
    """Write history part `generation` again from its records (CannotRebuild if it cannot be)."""
    store.put(keys.history_part(run_id, generation), to_parquet(part_rows(store, run_id, spec, generation), HistoryRow))


def part_generation(key: str) -> int | None:
    """The generation of a history part's key (None for a key that is not one)."""
    return keys.kind(key).generation if keys.kind(key).name == "history-part" else None


# The merged history -----------------------------------------------------------------------------------


def merge(store: Store, run_id: str, spec: RunSpec, say: Callable[..., None] = log.warning) -> bool:
    """history.parquet from every part, in order (only the parts it does not hold yet are read);
    True if it was written. A damaged history.parquet is merged again from the parts; a damaged
    part of a committed generation is rebuilt from its records first; a damaged part of a
    generation not committed is left out (its select writes it again). Each repair is said
    (`say`: a logger's warning, on stderr unless logging is configured)."""
    key = keys.history(run_id)
    try:
        previous = store.get(key)
    except NotFound:
        previous = None
    parts = store.list(keys.history_parts(run_id))
    repaired = set()
    while True:
        try:
            merged = merge_parts(previous, parts, store.get, HistoryRow, key)
            break
        except Damaged as error:
            if error.key == key and previous is not None:
                say("%s: merging it again from the history parts", _what(store, error))
                previous = None
            elif error.key in parts and error.key not in repaired and part_generation(error.key) is not None:
                generation = part_generation(error.key)
                if not committed(store, run_id, spec, generation):
                    say("%s: left out of the history until its generation is committed", _what(store, error))
                    parts.remove(error.key)
                    continue
                rebuild_part(store, run_id, spec, generation)
                say("%s: made again from the records of its generation", _what(store, error))
                repaired.add(error.key)
            else:
                raise damaged(store, error) from None
    if merged is not None:
        store.put(key, merged)
    return merged is not None


def _what(store: Store, error: Damaged) -> str:
    return f"{store.uri.rstrip('/')}/{error.key} was damaged ({error.reason})"


def read(store: Store, run_id: str, spec: RunSpec) -> pa.Table:
    """history.parquet as a table, rebuilt first (merge) when it is damaged or missing while parts
    exist; NotFound before the first generation's history is written."""
    key = keys.history(run_id)
    try:
        return read_table(store.get(key), HistoryRow, key)
    except Damaged:
        merge(store, run_id, spec)
    except NotFound:
        if not store.list(keys.history_parts(run_id)):
            raise
        merge(store, run_id, spec)
        log.warning("%s/%s was missing: merged again from the history parts", store.uri.rstrip("/"), key)
    return read_table(store.get(key), HistoryRow, key)
