"""`esgd compare SPEC`: the four modes side by side, with the same spec and budget, as in the
paper's Table 1 (best fitness, the [best, 15th best] range, the task's error metric; with µ < 15
the range ends at the worst survivor, and the table and plots say so) and its
Fig. 1 (fitness per generation) and Fig. 2 (offspring among the elites) with all modes together.

The modes share everything but `mode`: generations K, epochs per generation Ks, µ, the optimizer
pool, the seed. `single` trains one model, the others µ. Each mode is an ordinary run with the id
`<base>-<mode>`, where <base> is the spec's default run id (computed with mode=esgd, so the mode
written in the spec file does not matter): running the same command again resumes, and every run
can be inspected with `esgd report` or `esgd lineage`. `--modes` may add `pbt` (Population Based
Training) beside them; a spec's `pbt` section reaches that mode only.
"""

import json
import time
from collections.abc import Callable
from pathlib import Path

from esgd.core.metrics import band_label, finite
from esgd.core.spec import Mode, RunSpec, SpecError, parse_spec

MODES: tuple[Mode, ...] = ("single", "population", "no-evolution", "esgd")
"""The paper's four modes: what `esgd compare` runs by default."""
ALLOWED: tuple[Mode, ...] = (*MODES, "pbt")
"""What `--modes` may name: the paper's four and Population Based Training, side by side on request."""


def with_mode(spec: RunSpec, mode: str) -> RunSpec:
    """The spec in `mode`; its pbt section (if any) goes to the pbt mode only, the others refuse it."""
    data = {**spec.model_dump(mode="json"), "mode": mode}
    if mode != "pbt":
        data.pop("pbt", None)
    return parse_spec(data)


def base_run_id(spec: RunSpec) -> str:
    from esgd.controller.runs import default_run_id

    return default_run_id(with_mode(spec, "esgd"))


def parse_modes(text: str | None) -> tuple[str, ...]:
    """`--modes a,b` -> ("a", "b"); the paper's four when None; SpecError naming an unknown one."""
    modes = tuple(text.split(",")) if text else MODES
    unknown = [m for m in modes if m not in ALLOWED]
    if unknown:
        raise SpecError(f"--modes: unknown mode(s) {', '.join(unknown)} (choose from {', '.join(ALLOWED)})")
    return modes


def compare(
    spec: RunSpec,
    store_uri: str | None,
    base: str | None = None,
    device: str | None = None,
    modes: tuple[str, ...] = MODES,
    progress: Callable[[str], None] = print,
) -> list[dict]:
    """Run (or resume) every mode; one result per mode: mode, run (URI), mu (survivors per
    generation), best, top15, metric_name, metric, test and test_metric (the winner on the task's
    test set, if any), epochs (individual-epochs of SGD), generations (per-generation summaries)."""
    from esgd.analysis.report import load
    from esgd.controller.local import execute
    from esgd.controller.runs import create_or_resume
    from esgd.store.uri import open_store
    from esgd.worker.preflight import preflight

    store = open_store(store_uri)
    base = base or base_run_id(spec)
    results = []
    for mode in modes:
        mode_spec = with_mode(spec, mode)
        run, resumed = create_or_resume(store, mode_spec, f"{base}-{mode}", lambda s: preflight(s, device))
        progress(
            f"{'resuming' if resumed else 'starting'} {mode}: {run.uri} (µ={mode_spec.mu}, K={mode_spec.generations})"
        )
        began = time.perf_counter()
        execute(run, device, progress=progress)
        progress(f"{mode}: {time.perf_counter() - began:.1f}s")
        rows, summaries, final = load(store, run.id)
        last = summaries[-1]
        results.append(
            {
                "mode": mode,
                "run": run.uri,
                "mu": mode_spec.mu,
                "best": final.best_fitness,
                "top15": last["top15"],
                "metric_name": final.metric_name,
                "metric": final.metric,
                "test": final.test_fitness,  # None without a test set (Task.test)
                "test_metric": final.test_metric,
                "best_member": final.best_member,
                "epochs": sum(r["epochs"] or 0 for r in rows if r["role"] in ("parent", "finetune")),
                "generations": summaries,
            }
        )
    return results


def title(spec: RunSpec) -> str:
    return (
        f"{spec.name}: K={spec.generations}, Ks={spec.sgd.epochs}, µ={spec.population.mu}, "
        f"λ={spec.population.offspring}, m={spec.population.m}, seed {spec.seed}"
    )


def _metric(value: float | None, name: str) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.2f} %" if "error" in name else f"{value:.2f}"


def band(results: list[dict]) -> str:
    """The name of the top15 range for these results: "[best, 15th best]", or what it is when
    µ < 15 ("[best, 8th best]", "[best, worst survivor]")."""
    return f"[best, {band_label(r['mu'] for r in results)}]" if results else "[best, 15th best]"


def table(results: list[dict], title: str) -> str:
    """The paper's Table 1 layout, one row per mode."""
    name = results[0]["metric_name"] if results else "metric"
    label = band(results)
    width = max(20, len(label))
    head = f"{'mode':<14} {'best fitness':>12}  {label:<{width}} {name:>12}  {'SGD epochs':>10}"
    lines = [title, head, "-" * len(head)]
    for r in results:
        values = f"[{r['top15'][0]:.4f}, {r['top15'][1]:.4f}]"
        lines.append(
            f"{r['mode']:<14} {r['best']:>12.4f}  {values:<{width}} {_metric(r['metric'], name):>12}  {r['epochs']:>10}"
        )
    return "\n".join(lines)


def json_lines(results: list[dict]) -> str:
    keep = ("mode", "best", "top15", "metric_name", "metric", "run", "best_member", "epochs")
    return "\n".join(
        json.dumps(finite({**{k: r[k] for k in keep}, r["metric_name"]: r["metric"]}), allow_nan=False) for r in results
    )


def plots(results: list[dict], out: Path, title: str) -> list[Path]:
    """fitness.png (Fig. 1: best and the [best, 15th best] band per generation, every mode) and
    offspring_in_elite.png (Fig. 2: share of offspring among the m elites, every mode that evolves;
    the others are named as having no offspring)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    from esgd.analysis.report import output_dir

    output_dir(out)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for r in results:
        gens = [s["generation"] for s in r["generations"]]
        (line,) = ax.plot(
            gens, [s["best"] for s in r["generations"]], marker="o", markersize=3, label=f"{r['mode']} (best)"
        )
        ax.fill_between(
            gens,
            [s["top15"][0] for s in r["generations"]],
            [s["top15"][1] for s in r["generations"]],
            color=line.get_color(),
            alpha=0.15,
        )
    ax.set(xlabel="generation", ylabel="fitness (loss, lower is better)", title=f"{title}: best and {band(results)}")
    ax.set_yscale("log")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend()
    fig2, ax2 = plt.subplots(figsize=(8, 3.5))
    evolving = [r for r in results if any(s["phase"] == "evolution" for s in r["generations"])]
    width = 0.8 / max(1, len(evolving))
    for i, r in enumerate(evolving):
        gens = [s["generation"] for s in r["generations"]]
        ax2.bar(
            [g + (i - (len(evolving) - 1) / 2) * width for g in gens],
            [100 * s["offspring_in_elite"] for s in r["generations"]],
            width=width,
            label=r["mode"],
        )
    others = [r["mode"] for r in results if r not in evolving]
    if others:  # no evolution step, no offspring: named, not drawn as an entry without bars
        note = f"no offspring in {', '.join(others)} (no evolution step)"
        ax2.text(0.5, 0.9, note, ha="center", va="top", transform=ax2.transAxes)
    ax2.set(xlabel="generation", ylabel="% offspring", ylim=(0, 100), title=f"{title}: offspring among the m elites")
    ax2.xaxis.set_major_locator(MaxNLocator(integer=True))
    if evolving:
        ax2.legend()
    files = [out / "fitness.png", out / "offspring_in_elite.png"]
    for figure, path in zip((fig, fig2), files):
        figure.tight_layout()
        figure.savefig(path, dpi=100)
        plt.close(figure)
    return files
