"""The run's history: one row per individual per generation (records.HistoryRow). Each generation's
select (and finish, for fine-tuning) writes its rows as a part; history.parquet at the run's root
is merged from the parts."""

from esgd.core import keys
from esgd.core.records import HistoryRow, Member, TrainRecord
from esgd.core.tables import merge_parts, to_parquet
from esgd.store.base import NotFound
from esgd.worker.run import Run


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
    """The row of an offspring (or the reference model) at its birth in round `rnd`."""
    return HistoryRow(
        generation=generation,
        round=rnd,
        member=child.member,
        role=child.role,
        fitness=child.fitness,
        fitness_before=None,
        elite=elite,
        selected=selected,
        hparams=None,
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


def write_part(run: Run, generation: int, rows: list[HistoryRow]) -> None:
    run.store.put(keys.history_part(run.id, generation), to_parquet(rows, HistoryRow))


def rebuild(run: Run) -> None:
    """history.parquet at the run's root: all committed per-generation parts, in order."""
    try:
        previous = run.store.get(keys.history(run.id))
    except NotFound:
        previous = None
    merged = merge_parts(previous, run.store.list(keys.history_parts(run.id)), run.store.get, HistoryRow)
    if merged is not None:
        run.store.put(keys.history(run.id), merged)
