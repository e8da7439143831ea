"""docs/RESULTS.md and its plots, written from bench/results.py's measurements (results_stats)."""

import math
import os
import platform
import sys
import time
from importlib.metadata import version
from pathlib import Path

import results_stats as rs

GOAL = (
    "With the recommended defaults and equal per-individual budgets: ESGD's best fitness is at least as "
    "good as every baseline's in at least 80 % of task×seed pairs, never worse than the tuned single "
    "model by more than one standard deviation on any task, and the Wilcoxon test against the population "
    "baseline and against PBT is significant at 5 % over the suite."
)


def num(value: float | None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}" if math.isfinite(value) else str(value)


def pct(value: float | None) -> str:
    return "–" if value is None or math.isnan(value) else f"{100 * value:.2f} %"


def pval(p: float | None) -> str:
    return "– (every pair tied)" if p is None else f"{p:.3g}"


def mark(met: bool) -> str:
    return "**MET**" if met else "**NOT MET**"


def machine(context: dict) -> str:
    import torch

    from esgd.worker.threads import cpu_quota

    cpu = platform.processor() or platform.machine()
    try:  # the model name says more than "x86_64"
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    packages = ", ".join(f"{p} {version(p)}" for p in ("scikit-learn", "scipy", "numpy", "esgd"))
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU used"
    return (
        f"{os.cpu_count()} CPUs ({cpu_quota()} usable by this process; {cpu}), {gpu}; {platform.system()} "
        f"{platform.release()}; Python {platform.python_version()}, torch {torch.__version__}, {packages}. "
        f"Runs {context['jobs']} at a time (--jobs), {context['threads']} torch thread(s) each."
    )


def goal_section(checks: dict, tests: dict[str, dict]) -> list[str]:
    share, tuned, wil = checks["share"], checks["tuned"], checks["wilcoxon"]
    lines = ["## Goal", "", f"> {GOAL}", ""]
    lost = "; ".join(f"{t} seed {s} (lost to {', '.join(m)})" for t, s, m in share["bad"]) or "none"
    lines.append(
        f"1. {mark(share['met'])}: ESGD is at least as good as every baseline (ties included) in "
        f"{share['good']} of {share['pairs']} task×seed pairs ({100 * share['share']:.0f} %; goal ≥ 80 %). "
        f"Pairs where it lost to at least one baseline: {lost}."
    )
    if not tuned["rows"]:
        lines.append(f"2. {mark(False)}: not measured (the tuned single model was not among the modes run).")
    else:
        worse = [r for r in tuned["rows"] if not r["ok"]]
        detail = "; ".join(
            f"{r['task']}: ESGD {num(r['esgd'])} vs tuned {num(r['tuned'])} ± {num(r['std'])} "
            f"({'better' if r['gap'] <= 0 else ('within' if r['ok'] else 'worse') + ' by ' + num(r['gap'])})"
            for r in tuned["rows"]
        )
        head = "on every task" if not worse else f"worse by more than one std on {', '.join(r['task'] for r in worse)}"
        lines.append(
            f"2. {mark(tuned['met'])}: ESGD's mean test loss against the tuned single model's mean ± its "
            f"std over the seeds, {head}{'' if tuned['measured'] else ' (not every task has both)'}: {detail}."
        )
    parts = []
    for r in wil["rows"]:
        if not r["run"]:
            parts.append(f"against {r['baseline']}: not measured ({r['baseline']} was not among the modes run)")
        else:
            test = tests[r["baseline"]]
            verdict = "significant" if r["ok"] else "not significant"
            parts.append(
                f"against {r['baseline']}: p = {pval(r['p'])}, {verdict} ({test['wins']} wins, {test['ties']} ties, "
                f"{test['losses']} losses)"
            )
    lines.append(
        f"3. {mark(wil['met'])}: one-sided paired Wilcoxon signed-rank test (ESGD better) over all task×seed "
        f"pairs, at 5 %: {'; '.join(parts)}."
    )
    met = sum(c["met"] for c in (share, tuned, wil))
    lines += ["", f"**{met} of 3 checks met; the goal is {'MET' if met == 3 else 'NOT MET'}.**", ""]
    return lines


def settings(spec, mode: str) -> str:
    """The settings a mode reads beyond the shared spec: `single`'s optimizer, pbt's section."""
    from esgd.analysis.compare import with_mode

    if mode == "single":
        s = spec.single
        return f" ({s.optimizer}, lr {s.lr:g}, momentum {s.momentum:g}, batch size {s.batch_size})"
    section = getattr(with_mode(spec, mode), mode, None) if mode == "pbt" else None
    if section is None:
        return ""
    return " (its defaults: " + ", ".join(f"{k} {v}" for k, v in section.model_dump(mode="json").items()) + ")"


def _schedule(schedule) -> str:
    """A schedule in words: its value, or where it starts and ends and how."""
    if schedule.end is None or schedule.kind == "constant":
        return f"{schedule.start:g} (constant)"
    return f"{schedule.start:g} → {schedule.end:g} ({schedule.kind})"


def _backoff(sgd) -> str:
    """The spec's back-off in words."""
    kind = "strict back-off" if sgd.backoff == 1 else f"back-off with probability {sgd.backoff:g}"
    if sgd.patience == "generation":
        return kind + " checked once per generation, at its end"
    return kind + (f" with a patience of {sgd.patience} epoch(s)" if sgd.patience else " after every epoch")


def setup_section(context: dict) -> list[str]:
    from esgd.worker.task import load_task

    spec = next(iter(context["specs"].values()))
    p, s = spec.population, spec.sgd
    pool = ", ".join(f"{f} (lr {r.lr.low:g}–{r.lr.high:g})" for f, r in s.optimizers.items())
    grid = len(s.optimizers) * context["tune"]
    lines = [
        "## Setup",
        "",
        f"- **Budget** (the spec's recommended defaults, only K set): K = {spec.generations} generations of "
        f"Ks = {s.epochs} epoch(s); µ = {p.mu}, λ = {p.offspring}, ρ = {p.rho}, m = {p.m}; optimizer pool {pool}; "
        f"lr range ×{_schedule(s.lr_anneal)}, hyper-parameters `{s.hparams}`, optimizer state `{s.optimizer_state}`, "
        f"σ {_schedule(spec.evolution.sigma)} ({spec.evolution.sigma_scale}); {_backoff(s)} (the paper's settings "
        "differ in the lr range, annealed ×1 → ×0.1, in hyper-parameters redrawn every generation, and in "
        "generations of one epoch with the back-off after every epoch: docs/method.md). Every mode runs the "
        "same spec and seed, only `mode` differs.",
        f"- **Equal per-individual budget**: every individual trains K × Ks = {spec.generations * s.epochs} epochs in "
        f"every mode. A population mode trains µ = {p.mu} individuals ({p.mu * spec.generations * s.epochs} "
        f"individual-epochs), `single` one, `tuned-single` {grid} ({context['tune']} learning rates per family, "
        "spread log-evenly over the family's range in the pool; its row counts the whole grid's epochs and wall "
        "time). ESGD also evaluates λ offspring per generation (no training). The tables give both, measured.",
        f'- **Score ("best fitness" in the goal)**: each run\'s winner is chosen as the run chooses it, by its '
        "fitness (the task's loss on its fixed held-out set, 30 % of what the test set leaves), and then scored "
        f"on the task's test set ({100 * context.get('test', 0):.0f} % of its examples, never trained on and never "
        "selected on): the score is the winner's test loss (cross-entropy), lower is better, and the error rate "
        "is the winner's on the test set. `tuned-single` picks its grid point by fitness too. The fitness set "
        "itself cannot be the score: every population method selects on it, so its loss rewards selecting hard "
        'on a few hundred examples (see the fitness-set line under "ESGD against each baseline").',
        f"- **Tie**: a relative difference |a − b| / max(|a|, |b|) below {rs.TIE:g}.",
        "- **Wilcoxon**: scipy.stats.wilcoxon, paired over every task×seed pair both modes ran, on the relative "
        "differences (ESGD − baseline) / max(|ESGD|, |baseline|), so that tasks with large losses do not outweigh "
        "the others; tied pairs are dropped. p (ESGD better) is one-sided, p (two-sided) tests any difference.",
        f"- **Seeds** {', '.join(map(str, context['seeds']))}: the seed sets initial weights, hyper-parameter draws, "
        "data order, selection; each task's data and split are fixed."
        + (
            f" The knob study (KNOBS.md) chose the defaults on seeds {', '.join(map(str, context['chosen_on']))} "
            "of the same tasks; these seeds played no part in that."
            if context.get("chosen_on")
            else ""
        ),
        "",
        "| mode | what |",
        "|---|---|",
        *(f"| {m} | {what}{settings(spec, m)} |" for m, what in context["modes"].items()),
        "",
        "| task | what | task function and arguments | train / fitness / test examples |",
        "|---|---|---|---|",
    ]
    for name, (what, path, args, _) in context["tasks"].items():
        task = load_task(path, context["specs"][name].task_args)
        shown = ", ".join(f"{k}={v}" for k, v in args.items())
        sizes = [len(data[0]) if data else 0 for data in (task.train, task.fitness, task.test)]
        lines.append(f"| {name} | {what} | `{path}`{' (' + shown + ')' if shown else ''} | "
                     f"{' / '.join(map(str, sizes))} |")  # fmt: skip
    return [*lines, ""]


def task_sections(context: dict, table: dict, entries: dict, plots: dict[str, Path], out: Path) -> list[str]:
    lines = ["## Results per task", ""]
    for task in context["tasks"]:
        rows = [(m, table[task, m]) for m in context["modes"] if (task, m) in table]
        if not rows:
            continue
        metric = rows[0][1]["metric_name"]
        lines += [f"### {task}", "", f"![{task}]({plots[task].relative_to(out.parent).as_posix()})", ""]
        lines += [
            f"| mode | test loss, mean ± std | test {metric}, mean ± std | individual-epochs per seed | "
            "wall time per seed | seeds |",
            "|---|---|---|---|---|---|",
        ]
        best = min(r["mean"] for _, r in rows)
        for mode, r in rows:
            fit = f"{num(r['mean'])} ± {num(r['std'])}"
            fit = f"**{fit}**" if r["mean"] == best else fit
            runs = f" ({r['runs']:.0f} runs)" if r["runs"] > 1 else ""
            lines.append(
                f"| {mode} | {fit} | {pct(r['metric_mean'])} ± {pct(r['metric_std'])} | {r['epochs']:.0f}{runs} | "
                f"{r['wall_mean']:.1f} s | {r['n']} |"
            )
        chosen = [f"seed {s}: {e['chosen']}" for (t, s, m), e in sorted(entries.items()) if t == task and m == rs.TUNED]
        if chosen:
            lines += ["", f"tuned-single's best grid point: {'; '.join(chosen)}."]
        lines.append("")
    return lines


def versus_section(tests: dict[str, dict], on_fitness: dict[str, dict]) -> list[str]:
    lines = [
        "## ESGD against each baseline",
        "",
        "Over all task×seed pairs; a win is a lower test loss than the baseline's, a tie a relative difference "
        f"below {rs.TIE:g}. The median relative difference is (ESGD − baseline) / max(|ESGD|, |baseline|): negative "
        "favours ESGD.",
        "",
        "| baseline | pairs | wins | ties | losses | median relative difference | Wilcoxon p (ESGD better) | "
        "p (two-sided) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for t in tests.values():
        lines.append(
            f"| {t['baseline']} | {t['pairs']} | {t['wins']} | {t['ties']} | {t['losses']} | {num(t['median'], 4)} | "
            f"{pval(t['p_better'])} | {pval(t['p_two'])} |"
        )
    lines += [
        "",
        "The same comparison on the fitness set, which every run selects on (not a score: a method that selects "
        "harder looks better there than it generalises): "
        + "; ".join(f"against {t['baseline']} {t['wins']}/{t['ties']}/{t['losses']}" for t in on_fitness.values())
        + " (wins/ties/losses)"
        + ".",
    ]
    return [*lines, ""]


def favour_section(ranks: list[dict], table: dict, modes: list[str]) -> list[str]:
    lines = ["## Which tasks favour which method", "", "Modes by mean test loss on each task, best first:", ""]
    for r in ranks:
        order = " < ".join(f"{m} {num(table[r['task'], m]['mean'])}" for m in r["ranked"])
        rank = f" (ESGD ranks {r['esgd_rank']} of {len(r['ranked'])})" if r["esgd_rank"] else ""
        lines.append(f"- {r['task']}: {order}{rank}")
    lines += ["", "Best mean on:", ""]
    for mode in modes:
        won = [r["task"] for r in ranks if r["ranked"] and r["ranked"][0] == mode]
        lines.append(f"- {mode}: {', '.join(won) if won else 'no task'}")
    return [*lines, ""]


def seeds_section(context: dict, entries: dict) -> list[str]:
    modes = list(context["modes"])
    lines = ["## Every run: test loss per seed", "", f"| task | seed | {' | '.join(modes)} |"]
    lines.append("|---|---|" + "---|" * len(modes))
    for task in context["tasks"]:
        for seed in context["seeds"]:
            cells = [num(entries[task, seed, m]["best"]) if (task, seed, m) in entries else "–" for m in modes]
            lines.append(f"| {task} | {seed} | {' | '.join(cells)} |")
    return [*lines, ""]


def plot(task: str, table: dict, entries: dict, modes: list[str], path: Path) -> Path:
    """The distribution over the seeds of each mode's test loss on one task: a box per mode and
    every seed as a point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [m for m in modes if (task, m) in table]
    values = [[e["best"] for (t, _, m), e in sorted(entries.items()) if t == task and m == mode] for mode in shown]
    fig, ax = plt.subplots(figsize=(1.4 * len(shown) + 2, 3.8))
    finite = [[v for v in vs if math.isfinite(v)] for vs in values]
    ax.boxplot(finite, showfliers=False)
    ax.set_xticks(range(1, len(shown) + 1), shown)
    for i, vs in enumerate(finite, start=1):
        ax.scatter([i] * len(vs), vs, s=14, zorder=3, alpha=0.7)
    seeds = max(len(vs) for vs in values)
    ax.set(ylabel="test loss of the winner (lower is better)", title=f"{task}: test loss over {seeds} seed(s)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write(out: Path, records: list[dict], context: dict) -> None:
    """The markdown at `out`, and one plot per task in results/ beside it."""
    from esgd.analysis.report import output_dir

    entries = rs.collapse(records)
    table = rs.per_task(entries)
    tasks, modes = list(context["tasks"]), list(context["modes"])
    tests = {m: rs.versus(entries, m) for m in modes if m != rs.ESGD}
    fitness = {key: {**e, "best": e["fitness"]} for key, e in entries.items()}
    on_fitness = {m: rs.versus(fitness, m) for m in modes if m != rs.ESGD}
    checks = {
        "share": rs.at_least_as_good(entries),
        "tuned": rs.within_tuned(table, tasks),
        "wilcoxon": rs.significant(tests),
    }
    folder = output_dir(out.parent / "results")
    plots = {t: plot(t, table, entries, modes, folder / f"{t}.png") for t in tasks}
    wall = sum(r["wall_s"] for r in records)
    resumed = sum(bool(r.get("resumed")) for r in records)
    rest = f"; {resumed} run(s) were resumed, their time is the rest only" if resumed else ""
    lines = [
        "# Results: ESGD against its baselines, measured",
        "",
        f"Generated by `bench/results.py`, not written by hand: `{context['command']}` "
        f"(at {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}).",
        "",
        f"**Machine**: {machine(context)}",
        "",
        f"**Time**: {len(records)} runs, whose measured wall times add up to {wall:.0f} s ({wall / 60:.1f} min); "
        f"this invocation took {context['elapsed_s']:.0f} s (runs finished by an earlier one are read back from "
        f"the store, not run again{rest}).",
        "",
    ]
    if context["quick"]:
        lines += ["**A smoke test (`--quick`: 2 tasks, 2 seeds, tiny budgets): these numbers are not results.**", ""]
    lines += goal_section(checks, tests)
    lines += setup_section(context)
    lines += task_sections(context, table, entries, plots, out)
    lines += versus_section(tests, on_fitness)
    lines += favour_section(rs.favour(table, tasks, modes), table, modes)
    lines += seeds_section(context, entries)
    lines += [
        "## Rerunning",
        "",
        f"`{context['command']}` again reads the finished runs back from the store (`results-suite/` beside "
        "`runs/`) and resumes an interrupted one; each run can be inspected with `esgd report RUN_URI` or "
        "`esgd lineage RUN_URI`. Options: `python bench/results.py --help`.",
        "",
    ]
    out.write_text("\n".join(lines))
    print(f"wrote {out} and {len(plots)} plot(s) in {folder}", file=sys.stderr)
