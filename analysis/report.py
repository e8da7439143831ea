"""`esgd report`: per-generation numbers as JSON, or the paper's plots as PNG files."""

import json
import math
from pathlib import Path

from esgd.core import keys
from esgd.core.errors import InputError
from esgd.core.metrics import band_label, finite, summarize
from esgd.core.records import FinalSummary
from esgd.core.spec import RunSpec
from esgd.store import history
from esgd.store.base import NotFound, Store, StoreError
from esgd.store.run import frozen_spec
from esgd.store.uri import run_uri


def run_spec(store: Store, run_id: str) -> RunSpec:
    """The run's frozen spec; StoreError "no run at URI" when the store has no such run."""
    try:
        return frozen_spec(store, run_id)
    except NotFound:
        raise StoreError(f"no run at {run_uri(store, run_id)} (`esgd run` prints the URI of each run)") from None


def read_history(store: Store, run_id: str) -> list[dict]:
    """The run's history rows (the columns of records.HistoryRow); StoreError when there is no
    such run, or before its first generation is committed."""
    spec = run_spec(store, run_id)
    try:  # a damaged or missing history.parquet is merged again from its parts first
        return history.read(store, run_id, spec).to_pylist()
    except NotFound:
        raise StoreError(
            f"run {run_id} has no committed generation yet (0 of {spec.generations}): it is in progress, "
            "or stopped before its first generation ended (running it again resumes it)"
        ) from None


def read_final(store: Store, run_id: str) -> FinalSummary | None:
    """The run's final summary (best member, fitness, metric), or None before its finish step."""
    try:
        return store.read(keys.final_summary(run_id), FinalSummary)
    except NotFound:
        return None


def open_report(store: Store, run_id: str) -> tuple[RunSpec, list[dict], list[dict], FinalSummary | None]:
    """(frozen spec, history rows, per-generation summaries, final summary or None)."""
    spec = run_spec(store, run_id)
    rows = read_history(store, run_id)
    return spec, rows, summarize(rows, spec.m), read_final(store, run_id)


def load(store: Store, run_id: str) -> tuple[list[dict], list[dict], FinalSummary | None]:
    """(history rows, per-generation summaries, final summary or None)."""
    return open_report(store, run_id)[1:]


def unfinished(spec: RunSpec, summaries: list[dict], final: FinalSummary | None) -> str | None:
    """A line saying that the run is not finished (None when it is), for a report of a run in
    progress, or stopped."""
    done = sum(s["phase"] != "finetune" for s in summaries)
    if final is not None and done >= spec.generations:
        return None
    what = "its final stages are not committed yet" if done >= spec.generations else "not finished yet"
    return (
        f"run in progress or stopped: {done} of {spec.generations} generations committed, {what} "
        "(running it again resumes it)"
    )


def output_dir(out: Path, make: bool = True) -> Path:
    """`out` as the folder for plots, made if missing (unless not `make`: only checked, so a
    command can refuse it before its work rather than after); InputError when a file is in its way."""
    probe = out
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        where = "" if probe == out else f" ({probe} is a file)"
        raise InputError(f"--out {out}: not a directory{where}; --out names a folder for the plots")
    if make:
        out.mkdir(parents=True, exist_ok=True)
    return out


def _fitness_axis(ax, values: list[float]) -> None:
    """A log scale when the finite positive values span more than 3 decades (a diverged
    individual next to trained ones), else linear; whole-number generation ticks."""
    from matplotlib.ticker import MaxNLocator

    shown = [v for v in values if v is not None and math.isfinite(v) and v > 0]
    if shown and max(shown) > 1e3 * min(shown):
        ax.set_yscale("log")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def json_lines(summaries: list[dict]) -> str:
    return "\n".join(json.dumps(finite(s), allow_nan=False) for s in summaries)


def plots(summaries: list[dict], out: Path, title: str, mu: int | None = None) -> list[Path]:
    """fitness.png (best, the [best, 15th best] band, the m-elitist and population means),
    offspring_in_elite.png and best_optimizer.png; `mu` (survivors per generation) names the band's
    upper end truthfully when it is under 15 (core.metrics.band_label)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    output_dir(out)
    gens = [s["generation"] for s in summaries]
    files = []

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.fill_between(
        gens,
        [s["top15"][0] for s in summaries],
        [s["top15"][1] for s in summaries],
        alpha=0.3,
        label=f"best .. {band_label([mu or 15])}",
    )
    ax.plot(gens, [s["best"] for s in summaries], marker="o", label="best")
    ax.plot(gens, [s["elite_mean"] for s in summaries], label="m-elitist mean")
    ax.plot(gens, [s["mean"] for s in summaries], linestyle="--", label="population mean")
    ax.set(xlabel="generation", ylabel="fitness (loss, lower is better)", title=f"{title}: fitness per generation")
    _fitness_axis(ax, [v for s in summaries for v in (s["best"], s["elite_mean"], s["mean"], *s["top15"])])
    ax.legend()
    files.append(out / "fitness.png")

    fig2, ax2 = plt.subplots(figsize=(7, 3))
    if any(s["phase"] == "evolution" for s in summaries):
        ax2.bar(gens, [100 * s["offspring_in_elite"] for s in summaries])
    else:  # population, no-evolution, single: nothing is born, say so instead of an empty plot
        ax2.text(0.5, 0.5, "no offspring: this mode has no evolution step", ha="center", transform=ax2.transAxes)
    ax2.set(xlabel="generation", ylabel="% offspring", ylim=(0, 100), title=f"{title}: offspring among the m elites")
    ax2.set_xlim(min(gens) - 0.6, max(gens) + 0.6)  # the run's generations, also with no bars to draw
    ax2.xaxis.set_major_locator(MaxNLocator(integer=True))
    files.append(out / "offspring_in_elite.png")

    fig3, ax3 = plt.subplots(figsize=(7, 3))
    names = sorted({s["best_optimizer"] or "-" for s in summaries})
    ax3.scatter(gens, [names.index(s["best_optimizer"] or "-") for s in summaries])
    ax3.set_yticks(range(len(names)), names)
    ax3.set(xlabel="generation", title=f"{title}: optimizer of the best individual after the SGD step")
    ax3.xaxis.set_major_locator(MaxNLocator(integer=True))
    files.append(out / "best_optimizer.png")

    for figure, path in zip((fig, fig2, fig3), files):
        figure.tight_layout()
        figure.savefig(path, dpi=100)
        plt.close(figure)
    return files
