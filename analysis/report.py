"""`esgd report`: per-generation numbers as JSON, or the paper's plots as PNG files."""

import json
from pathlib import Path

from esgd.core import keys
from esgd.core.metrics import finite, summarize
from esgd.core.records import FinalSummary, HistoryRow
from esgd.core.tables import read_table
from esgd.store.base import NotFound, Store, StoreError
from esgd.store.run import frozen_spec


def read_history(store: Store, run_id: str) -> list[dict]:
    """The run's history rows (the columns of records.HistoryRow); StoreError before its first
    generation is committed."""
    key = keys.history(run_id)
    try:
        return read_table(store.get(key), HistoryRow, key).to_pylist()
    except NotFound:
        raise StoreError(f"run {run_id} has no committed generation in {store.uri}") from None


def read_final(store: Store, run_id: str) -> FinalSummary | None:
    """The run's final summary (best member, fitness, metric), or None before its finish step."""
    try:
        return store.read(keys.final_summary(run_id), FinalSummary)
    except NotFound:
        return None


def load(store: Store, run_id: str) -> tuple[list[dict], list[dict], FinalSummary | None]:
    """(history rows, per-generation summaries, final summary or None)."""
    try:
        spec = frozen_spec(store, run_id)
    except NotFound:
        raise StoreError(f"run {run_id} has no committed generation in {store.uri}") from None
    rows = read_history(store, run_id)
    return rows, summarize(rows, spec.m), read_final(store, run_id)


def json_lines(summaries: list[dict]) -> str:
    return "\n".join(json.dumps(finite(s), allow_nan=False) for s in summaries)


def plots(summaries: list[dict], out: Path, title: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    gens = [s["generation"] for s in summaries]
    files = []

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.fill_between(
        gens,
        [s["top15"][0] for s in summaries],
        [s["top15"][1] for s in summaries],
        alpha=0.3,
        label="best .. 15th best",
    )
    ax.plot(gens, [s["best"] for s in summaries], marker="o", label="best")
    ax.plot(gens, [s["elite_mean"] for s in summaries], label="m-elitist mean")
    ax.plot(gens, [s["mean"] for s in summaries], linestyle="--", label="population mean")
    ax.set(xlabel="generation", ylabel="fitness (loss, lower is better)", title=f"{title}: fitness per generation")
    ax.legend()
    files.append(out / "fitness.png")

    fig2, ax2 = plt.subplots(figsize=(7, 3))
    ax2.bar(gens, [100 * s["offspring_in_elite"] for s in summaries])
    ax2.set(xlabel="generation", ylabel="% offspring", ylim=(0, 100), title=f"{title}: offspring among the m elites")
    files.append(out / "offspring_in_elite.png")

    fig3, ax3 = plt.subplots(figsize=(7, 3))
    names = sorted({s["best_optimizer"] or "-" for s in summaries})
    ax3.scatter(gens, [names.index(s["best_optimizer"] or "-") for s in summaries])
    ax3.set_yticks(range(len(names)), names)
    ax3.set(xlabel="generation", title=f"{title}: optimizer of the best individual after the SGD step")
    files.append(out / "best_optimizer.png")

    for figure, path in zip((fig, fig2, fig3), files):
        figure.tight_layout()
        figure.savefig(path, dpi=100)
        plt.close(figure)
    return files
