"""ESGD's knobs, measured on the benchmark suite (bench/results.py): each variant is ESGD with the
paper's settings and a few spec fields changed, run on the suite's tasks and seeds at the suite's
budget, and compared pair by pair (same task, same seed) with the paper's settings, the population
baseline and PBT. The markdown (docs/KNOBS.md) is written from the measurements; the spec's defaults
are what it shows wins.

  python bench/knobs.py --out docs/KNOBS.md --store STORE [--jobs 2]    # STORE: the suite's store
  python bench/knobs.py --out /tmp/k.md --quick                         # 2 tasks, 2 seeds, tiny budgets

Runs are ordinary runs in the store, resumed and skipped like the suite's (results.run_all). Every
variant keeps the per-individual budget (individual-epochs) of the paper's settings: Ks × K is the same.
"""

import math
import shlex
import statistics
import sys
import time
from pathlib import Path

import results
import results_stats as stats

from esgd.core.errors import InputError

PAPER = {
    "sgd": {
        "epochs": 1,
        "lr_anneal": {"start": 1.0, "end": 0.1, "kind": "exponential"},
        "hparams": "redraw",
        "optimizer_state": "reset",
        "patience": 0,
    },
    "evolution": {"sigma": {"start": 0.01, "end": 0.001, "kind": "exponential"}, "sigma_scale": "absolute"},
}
"""The paper's settings where today's defaults differ (docs/method.md, "The paper's settings"): every
run of the study is made from them plus its variant's changes, so that the study measures the same
runs whatever the defaults are (a rerun after the defaults changed finds them all in the store).
Ks = 1: the study's budget is K × Ks of the suite's, as K generations of one epoch (paper_budget)."""


def paper_budget(budget: dict) -> dict:
    """The suite's budget in the paper's generations of one epoch: the same epochs per individual."""
    return {
        **budget,
        "generations": budget["generations"] * budget["sgd"]["epochs"],
        "sgd": {**budget["sgd"], "epochs": 1},
    }


def _elite_all(budget: dict) -> dict:
    return {"population": {"elite": budget.get("population", {}).get("mu", 8)}}


def _epochs_times(factor: int, patience: int | str = 0):
    """Ks × factor and K / factor, with back-off patience (sgd.patience: a number, or generation)."""

    def changes(budget: dict) -> dict:
        epochs = factor * budget["sgd"]["epochs"]
        return {"generations": max(1, budget["generations"] // factor), "sgd": {"epochs": epochs, "patience": patience}}

    return changes


def _defaults(budget: dict) -> dict:
    """The changes that make the paper's settings the spec's defaults (the DEFAULTS variant)."""
    return _combine(CONSTANT_LR, KEEP, _epochs_times(5, "generation")(budget))


def _on_defaults(change):
    """A variant of the spec's defaults: `change` (spec changes, or a function of the budget giving
    them) on top of _defaults."""
    return lambda budget: _combine(_defaults(budget), change(budget) if callable(change) else change)


def _combine(*changes: dict) -> dict:
    out = {}
    for change in changes:
        out = results.merge(out, change)
    return out


CONSTANT_LR = {"sgd": {"lr_anneal": {"start": 1.0, "end": None, "kind": "exponential"}}}
KEEP = {"sgd": {"hparams": "keep"}}
CARRY = {"sgd": {"optimizer_state": "carry"}}
SIGMA_X10 = {"evolution": {"sigma": {"start": 0.1, "end": 0.01}}}
TRAIN_FITNESS = {"task_args": {"fitness": "train"}}

# name -> (why it is tried, spec changes, or a function of the budget giving them), each applied to
# the paper's settings at the suite's budget in generations of one epoch (paper_budget: K = 50, Ks = 1).
VARIANTS = {
    "paper": ("the paper's settings: the spec's defaults before this study", {}),
    "relaxed back-off 0.5": (
        "an epoch that made fitness worse is kept with probability 0.5 (the paper's relaxed variant)",
        {"sgd": {"backoff": 0.5}},
    ),
    "no back-off": ("every epoch is kept: plain SGD between the evolution steps", {"sgd": {"backoff": 0.0}}),
    "σ ×10": ("mutation σ 0.1 → 0.01 instead of 0.01 → 0.001", SIGMA_X10),
    "no mutation": (
        "σ = 0: recombination only",
        {"evolution": {"sigma": {"start": 0.0, "end": None, "kind": "constant"}}},
    ),
    "flat roulette": (
        "roulette floor 1.0: weaker parent selection pressure",
        {"evolution": {"roulette_floor": 1.0}},
    ),
    "m = 2": ("2 elites of µ = 8 instead of 5: more random survivors", {"population": {"elite": 2}}),
    "m = µ": ("every survivor is among the best µ of µ + λ: no random survivors (truncation)", _elite_all),
    "Ks × 2 and K / 2": (
        "twice the epochs per generation, half the generations (K = 25, Ks = 2 at the suite's budget)",
        _epochs_times(2),
    ),
    "Ks × 5 and K / 5": (
        "five epochs per generation, a fifth of the generations (K = 10, Ks = 5), strict back-off after each epoch",
        _epochs_times(5),
    ),
    "Ks × 5 and K / 5, patience 2": (
        "as Ks × 5 and K / 5; worse epochs kept up to 2 in a row, then back to the step's best (sgd.patience: 2)",
        _epochs_times(5, 2),
    ),
    "Ks × 5 and K / 5, back-off per generation": (
        "as Ks × 5 and K / 5, the back-off checked once, at the step's end (sgd.patience: generation)",
        _epochs_times(5, "generation"),
    ),
    "Ks × 2 and K / 2, back-off per generation": (
        "as Ks × 2 and K / 2, the back-off checked once, at the step's end (sgd.patience: generation)",
        _epochs_times(2, "generation"),
    ),
    "σ relative ×10": (
        "σ 0.1 → 0.01 times each tensor's RMS (evolution.sigma_scale: rms): about the paper's σ on weights of RMS 0.1",
        {"evolution": {"sigma_scale": "rms", "sigma": {"start": 0.1, "end": 0.01}}},
    ),
    "fitness on the training set": (
        "fitness (back-off and selection) measured on the training set, the paper's CIFAR-10 choice",
        TRAIN_FITNESS,
    ),
    "lr not annealed": ("the lr range stays as it is (×1 → ×1)", CONSTANT_LR),
    "hparams kept": (
        "an individual keeps the optimizer and hyper-parameters it trained with (sgd.hparams: keep)",
        KEEP,
    ),
    "optimizer state carried": (
        "an individual that keeps its optimizer family keeps its optimizer state (sgd.optimizer_state: carry)",
        CARRY,
    ),
    "lr not annealed + hparams kept": ("the knobs named, together", results.merge(CONSTANT_LR, KEEP)),
    "lr not annealed + hparams inherited": (
        "hparams kept, and an offspring takes its fittest parent's (sgd.hparams: inherit)",
        results.merge(CONSTANT_LR, {"sgd": {"hparams": "inherit"}}),
    ),
    "lr not annealed + Ks × 2 and K / 2": (
        "the knobs named, together",
        lambda budget: results.merge(CONSTANT_LR, _epochs_times(2)(budget)),
    ),
    "lr not annealed + hparams kept + Ks × 5 and K / 5": (
        "the knobs named, together",
        lambda budget: _combine(CONSTANT_LR, KEEP, _epochs_times(5)(budget)),
    ),
    "lr not annealed + hparams kept + Ks × 5 and K / 5, patience 2": (
        "the knobs named, together",
        lambda budget: _combine(CONSTANT_LR, KEEP, _epochs_times(5, 2)(budget)),
    ),
    "lr not annealed + hparams kept + Ks × 5 and K / 5, back-off per generation": (
        "the knobs named, together",
        _defaults,
    ),
    "defaults + ρ = 1": (
        "the spec's defaults, each offspring a mutated copy of one roulette-drawn parent (no averaging)",
        _on_defaults({"population": {"rho": 1}}),
    ),
    "defaults + ρ = 1 + hparams inherited": (
        "as defaults + ρ = 1, and the copy trains with its parent's hyper-parameters: close to a PBT exploit",
        _on_defaults({"population": {"rho": 1}, "sgd": {"hparams": "inherit"}}),
    ),
    "defaults + hparams inherited": (
        "the spec's defaults, an offspring training with its fittest parent's hyper-parameters",
        _on_defaults({"sgd": {"hparams": "inherit"}}),
    ),
    "defaults + σ ×10": ("the spec's defaults and σ ×10", _on_defaults(SIGMA_X10)),
    "defaults + m = µ": (
        "the spec's defaults and m = µ",
        _on_defaults(_elite_all),
    ),
    "defaults + state carried": (
        "the spec's defaults and state carried",
        _on_defaults(CARRY),
    ),
    "lr not annealed + hparams kept + state carried": ("the knobs named, together", _combine(CONSTANT_LR, KEEP, CARRY)),
    "lr not annealed + hparams kept + σ ×10": ("the knobs named, together", _combine(CONSTANT_LR, KEEP, SIGMA_X10)),
    "lr not annealed + hparams kept + σ ×10 + state carried": (
        "the knobs named, together",
        _combine(CONSTANT_LR, KEEP, SIGMA_X10, CARRY),
    ),
    "lr not annealed + hparams kept + σ ×10 + fitness on the training set": (
        "the knobs named, together",
        _combine(CONSTANT_LR, KEEP, SIGMA_X10, TRAIN_FITNESS),
    ),
    "lr not annealed + hparams kept + σ ×10 + state carried + fitness on the training set": (
        "the knobs named, together",
        _combine(CONSTANT_LR, KEEP, SIGMA_X10, CARRY, TRAIN_FITNESS),
    ),
    "lr not annealed + hparams kept + σ ×10 + m = µ": (
        "the knobs named, together",
        lambda budget: _combine(CONSTANT_LR, KEEP, SIGMA_X10, _elite_all(budget)),
    ),
}
REFERENCE = "paper"
DEFAULTS = "lr not annealed + hparams kept + Ks × 5 and K / 5, back-off per generation"
"""The variant that the spec's defaults are (the suite's ESGD runs are its runs; a test holds them together)."""
BASELINES = ("population", "pbt")


def study_seeds(profile: dict) -> range:
    """The seeds the study runs (and chooses the defaults on): 0..n-1, before the suite's own."""
    return range(profile["seeds"])


def jobs(variants, tasks, seeds, profile) -> list[dict]:
    """The runs: every variant in mode esgd, and the baselines, for every task and seed, all from the
    paper's settings at the profile's budget."""
    budget = paper_budget(profile["budget"])
    base, out = results.merge(budget, PAPER), []
    for task in tasks:
        for seed in seeds:
            for name in variants:
                changes = VARIANTS[name][1]
                spec = results.merge(base, changes(budget) if callable(changes) else changes)
                out += [{**j, "mode": name} for j in results.jobs_for(task, seed, "esgd", spec, 1)]
            for mode in BASELINES:
                out += results.jobs_for(task, seed, mode, base, 1)
    return out


def compare(entries: dict[tuple, dict], variant: str, rival: str) -> dict:
    """`variant` against `rival` over the task×seed pairs (results_stats.versus, ESGD's place taken
    by the variant)."""
    renamed = {
        (t, s, {variant: stats.ESGD, rival: rival}[m]): e for (t, s, m), e in entries.items() if m in (variant, rival)
    }
    return stats.versus(renamed, rival)


def _p(value) -> str:
    return "-" if value is None else f"{value:.3g}"


def write(out: Path, entries: dict[tuple, dict], variants, tasks, context: dict) -> None:
    table = stats.per_task(entries)
    lines = [
        "# ESGD's knobs, measured",
        "",
        f"Generated by `{context['command']}` on {time.strftime('%Y-%m-%d')}: {context['runs']} runs whose measured "
        f"wall times add up to {context['run_s'] / 60:.1f} min, {context['jobs']} at once; this invocation took "
        f"{context['elapsed_s'] / 60:.1f} min (runs finished by an earlier one are read back from the store). "
        "Do not edit by hand: run the command again.",
        "",
        f"Tasks: {', '.join(tasks)}; seeds {', '.join(map(str, context['seeds']))}; the budget of "
        "[RESULTS.md](RESULTS.md) (µ = 8, λ = 8, K × Ks = 50 individual-epochs per individual). Each row is ESGD "
        "with the paper's settings and the change named, against ESGD with the paper's settings, the population "
        "baseline and PBT (both with the paper's settings: RESULTS.md runs them with the defaults) of the same "
        "task and seed, and with the spec's defaults when the study runs them: "
        "wins/ties/losses over task×seed pairs (tie: relative difference below 1e-3), the median "
        "relative difference of the score (negative: the variant is better), and the two-sided Wilcoxon "
        "p-value on the relative differences. The score is the suite's: the winner's loss on the task's test "
        "set, never trained or selected on. The defaults are chosen here, on these seeds, so their margin here "
        "is an optimistic estimate: [RESULTS.md](RESULTS.md) measures them on seeds the study did not use.",
        "",
    ]
    medians = (REFERENCE, DEFAULTS) if DEFAULTS in variants else (REFERENCE,)
    lines += [
        "| variant | what | vs the paper's settings: W/T/L, median, p | "
        + ("vs the defaults: W/T/L, median, p | " if len(medians) == 2 else "")
        + "vs population: W/T/L, p | vs PBT: W/T/L, p |",
        "|---|---|" + "---|" * (len(medians) + len(BASELINES)),
    ]
    for name in variants:
        cells = []
        for rival in (*medians, *BASELINES):
            if rival == name:
                cells.append("—")
                continue
            v = compare(entries, name, rival)
            median = f", {v['median']:+.3f}" if rival in medians else ""
            cells.append(f"{v['wins']}/{v['ties']}/{v['losses']}{median}, p {_p(v['p_two'])}")
        what = VARIANTS[name][0] + (": **the spec's defaults**" if name == DEFAULTS else "")
        lines.append(f"| {name} | {what} | {' | '.join(cells)} |")
    lines += ["", *verdict(entries, variants), "", "## Mean test loss per task (± std over seeds)", ""]
    lines += [
        "Bold: the best of the column. Rank: the mean over the tasks of the row's rank in each column (1 = best).",
        "",
    ]
    rows = [*variants, *BASELINES]
    best = {task: min((table[task, r]["mean"], r) for r in rows if (task, r) in table)[1] for task in tasks}
    lines += ["| | " + " | ".join(tasks) + " | rank |", "|---|" + "---|" * (len(tasks) + 1)]
    for name in rows:
        cells = []
        for task in tasks:
            e = table.get((task, name))
            cell = "-" if e is None else f"{e['mean']:.4f} ± {e['std']:.4f}"
            cells.append(f"**{cell}**" if best[task] == name else cell)
        rank = statistics.fmean(_rank(table, task, name, rows) for task in tasks)
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {rank:.1f} |")
    out.write_text("\n".join(lines) + "\n")


def verdict(entries: dict[tuple, dict], variants) -> list[str]:
    """What the table says, in words: the variants better or worse than the paper's settings at 5 % (two-sided
    Wilcoxon), and how the better ones fare against population and PBT."""
    tests = {name: compare(entries, name, REFERENCE) for name in variants if name != REFERENCE}
    better = [n for n, t in tests.items() if t["p_two"] is not None and t["p_two"] < 0.05 and t["median"] < 0]
    worse = [n for n, t in tests.items() if t["p_two"] is not None and t["p_two"] < 0.05 and t["median"] > 0]
    lines = [
        f"**Better than the paper's settings at 5 %**: {', '.join(better) or 'none'}. "
        f"**Worse at 5 %**: {', '.join(worse) or 'none'}. The others differ from them by no more than "
        "the seeds do."
    ]
    for name in better:
        vs = {b: compare(entries, name, b) for b in BASELINES}
        said = "; ".join(f"vs {b} {v['wins']}/{v['ties']}/{v['losses']}, p {_p(v['p_two'])}" for b, v in vs.items())
        lines.append(f"- {name}: {said}.")
    if DEFAULTS in variants:
        tests = {name: compare(entries, name, DEFAULTS) for name in variants if name not in (REFERENCE, DEFAULTS)}
        beat = [n for n, t in tests.items() if t["p_two"] is not None and t["p_two"] < 0.05 and t["median"] < 0]
        lines += ["", f"**Better than the spec's defaults ({DEFAULTS}) at 5 %**: {', '.join(beat) or 'none'}."]
    return lines


def _rank(table, task, name, columns) -> float:
    means = sorted(table[task, c]["mean"] for c in columns if (task, c) in table)
    value = table.get((task, name), {}).get("mean", math.inf)
    return 1 + sum(m < value for m in means)


def main(argv: list[str] | None = None) -> int:
    from esgd.cli.options import STORE, positive, run_main

    p = results.Parser(prog="knobs.py", parents=[STORE], description=__doc__.split("\n\n")[0].replace("\n", " "))
    p.add_argument("--out", required=True, help="the markdown to write")
    p.add_argument("--quick", action="store_true", help="smoke test: 2 tasks, 2 seeds, tiny budgets (not results)")
    p.add_argument("--variants", help=f"comma-separated, from {', '.join(VARIANTS)} (default: all)")
    p.add_argument("--jobs", type=positive, default=1, metavar="N", help="runs at once (default 1)")
    args = p.parse_args(argv)
    return run_main("knobs.py", lambda: study(args, argv))


def study(args, argv) -> int:
    profile = results.QUICK if args.quick else results.FULL
    variants = results._names(args.variants, VARIANTS, "variants") if args.variants else tuple(VARIANTS)
    if REFERENCE not in variants:
        raise InputError(f"--variants: must include {REFERENCE!r} (every variant is compared with it)")
    out = Path(args.out)
    if out.is_dir() or not out.parent.is_dir():
        raise InputError(f"--out: {out} must be a file in an existing folder")
    tasks, seeds = profile["tasks"], study_seeds(profile)
    todo = jobs(variants, tasks, seeds, profile)
    print(f"knobs.py: {len(todo)} runs ({len(variants)} variants and {len(BASELINES)} baselines)", file=sys.stderr)
    began = time.perf_counter()
    records = results.run_all(todo, args.store, None, max(1, args.jobs), 1)
    entries = stats.collapse(records)
    command = shlex.join(["python", "bench/knobs.py", *(sys.argv[1:] if argv is None else argv)])
    context = {
        "command": command,
        "elapsed_s": time.perf_counter() - began,
        "runs": len({r["run"] for r in records}),
        "run_s": sum({r["run"]: r["wall_s"] for r in records}.values()),
        "jobs": args.jobs,
        "seeds": list(seeds),
    }
    write(out, entries, variants, list(tasks), context)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
