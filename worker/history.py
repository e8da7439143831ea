"""The run's history: one row per individual per generation (records.HistoryRow). Each generation's
select (and finish, for fine-tuning) writes its rows as a part; history.parquet at the run's root
is merged from the parts. How rows are made of records, and how a damaged part or merge is rebuilt
from what committed it: esgd.store.history."""

from esgd.core import keys
from esgd.core.records import HistoryRow
from esgd.core.tables import to_parquet
from esgd.store import history as stored
from esgd.store.history import born_row, copies, generation_rows, trained_row
from esgd.worker.run import Run

__all__ = ["born_row", "copies", "generation_rows", "rebuild", "trained_row", "write_part"]


def write_part(run: Run, generation: int, rows: list[HistoryRow]) -> None:
    run.store.put(keys.history_part(run.id, generation), to_parquet(rows, HistoryRow))


def rebuild(run: Run) -> None:
    """history.parquet at the run's root: all committed per-generation parts, in order (a damaged
    part of a committed generation, or a damaged history.parquet, rebuilt: esgd.store.history.merge)."""
    stored.merge(run.store, run.id, run.spec)
