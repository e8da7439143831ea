"""The suite's statistics, from the per-run results of bench/results.py (plain dicts: task, seed,
mode, point, best (the score: the winner's test loss), fitness (its loss on the fitness set, which
chose it), metric, epochs, wall_s): per-task mean ± std, ESGD's wins, ties and losses
against each baseline over task×seed pairs, a paired Wilcoxon signed-rank test per baseline, the
goal's three checks, and which tasks favour which method. Lower fitness (a loss) is better.
"""

import math
import statistics
from collections import defaultdict

TIE = 1e-3
"""Two best fitnesses tie when their relative difference |a − b| / max(|a|, |b|) is below this."""
ALPHA = 0.05
"""Significance level of the goal's Wilcoxon check."""
SHARE = 0.8
"""The goal's share of task×seed pairs in which ESGD must be at least as good as every baseline."""
ESGD, TUNED = "esgd", "tuned-single"


def collapse(records: list[dict]) -> dict[tuple, dict]:
    """(task, seed, mode) -> that mode's result: best, fitness, metric, epochs, wall_s, runs, chosen.
    The grid of a tuned mode becomes its point of lowest fitness (`chosen`: picked on the fitness
    set, never on the test set), at the cost of the whole grid."""
    groups = defaultdict(list)
    for r in records:
        groups[r["task"], r["seed"], r["mode"]].append(r)
    out = {}
    for key, runs in groups.items():
        pick = min(runs, key=lambda r: r["fitness"])  # chosen on the fitness set, as every run chooses
        out[key] = {
            "best": pick["best"],
            "fitness": pick["fitness"],
            "metric": pick["metric"],
            "metric_name": pick["metric_name"],
            "epochs": sum(r["epochs"] for r in runs),
            "wall_s": sum(r["wall_s"] for r in runs),
            "runs": len(runs),
            "chosen": pick["point"],
            "resumed": any(r.get("resumed") for r in runs),
        }
    return out


def _spread(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (nan with one value)."""
    mean = statistics.fmean(values)
    if len(values) < 2 or not all(math.isfinite(v) for v in values):
        return mean, math.nan
    return mean, statistics.stdev(values)


def per_task(entries: dict[tuple, dict]) -> dict[tuple, dict]:
    """(task, mode) -> n (seeds), mean and std of the best fitness and of the metric, individual-
    epochs and wall seconds per seed (a tuned mode: its whole grid), total wall seconds."""
    groups = defaultdict(list)
    for (task, _seed, mode), e in entries.items():
        groups[task, mode].append(e)
    out = {}
    for key, group in groups.items():
        mean, std = _spread([e["best"] for e in group])
        metrics = [e["metric"] for e in group if e["metric"] is not None]
        metric_mean, metric_std = _spread(metrics) if metrics else (math.nan, math.nan)
        out[key] = {
            "n": len(group),
            "mean": mean,
            "std": std,
            "metric_mean": metric_mean,
            "metric_std": metric_std,
            "metric_name": group[0]["metric_name"],
            "epochs": statistics.fmean(e["epochs"] for e in group),
            "runs": statistics.fmean(e["runs"] for e in group),
            "wall_mean": statistics.fmean(e["wall_s"] for e in group),
            "wall_total": sum(e["wall_s"] for e in group),
        }
    return out


def relative(a: float, b: float) -> float:
    """(a − b) / max(|a|, |b|): negative when a (ESGD) is better; 0 when equal. A diverged run
    (inf) loses to any finite one (±1), two diverged ones are equal."""
    if a == b:
        return 0.0
    if math.isinf(a) or math.isinf(b):
        return 1.0 if math.isinf(a) and not math.isinf(b) else -1.0 if math.isinf(b) and not math.isinf(a) else 0.0
    return (a - b) / max(abs(a), abs(b))


def outcome(a: float, b: float) -> str:
    d = relative(a, b)
    return "tie" if abs(d) < TIE else "win" if d < 0 else "loss"


def versus(entries: dict[tuple, dict], baseline: str) -> dict:
    """ESGD against one baseline over the task×seed pairs both ran: wins, ties, losses, the median
    relative difference, and Wilcoxon signed-rank p-values on the relative differences (ties count
    as zero differences and are dropped, scipy's zero_method="wilcox"): `p_better` one-sided (ESGD's
    loss lower), `p_two` two-sided. None when no pair is untied."""
    from scipy.stats import wilcoxon

    pairs = sorted((t, s) for (t, s, m) in entries if m == ESGD and (t, s, baseline) in entries)
    diffs = [relative(entries[t, s, ESGD]["best"], entries[t, s, baseline]["best"]) for t, s in pairs]
    counts = {"win": 0, "tie": 0, "loss": 0}
    for d in diffs:
        counts["tie" if abs(d) < TIE else "win" if d < 0 else "loss"] += 1
    untied = [d for d in diffs if abs(d) >= TIE]
    p_better = p_two = None
    if untied:
        p_better = float(wilcoxon(untied, alternative="less").pvalue)
        p_two = float(wilcoxon(untied).pvalue)
    return {
        "baseline": baseline,
        "pairs": len(pairs),
        "wins": counts["win"],
        "ties": counts["tie"],
        "losses": counts["loss"],
        "median": statistics.median(diffs) if diffs else math.nan,
        "p_better": p_better,
        "p_two": p_two,
    }


def at_least_as_good(entries: dict[tuple, dict]) -> dict:
    """The goal's first check: the task×seed pairs in which ESGD ties or beats every baseline run."""
    pairs = sorted((t, s) for (t, s, m) in entries if m == ESGD)
    good, bad = [], []
    for t, s in pairs:
        rivals = [m for (tt, ss, m) in entries if (tt, ss) == (t, s) and m != ESGD]
        lost = [m for m in rivals if outcome(entries[t, s, ESGD]["best"], entries[t, s, m]["best"]) == "loss"]
        (bad if lost else good).append((t, s, lost))
    share = len(good) / len(pairs) if pairs else 0.0
    return {"pairs": len(pairs), "good": len(good), "share": share, "met": bool(pairs) and share >= SHARE, "bad": bad}


def within_tuned(table: dict[tuple, dict], tasks: list[str]) -> dict:
    """The goal's second check, per task: ESGD's mean best fitness is better than the tuned single
    model's, or worse by at most one standard deviation of the tuned model's best fitness over the
    seeds (sample std)."""
    rows = []
    for task in tasks:
        e, t = table.get((task, ESGD)), table.get((task, TUNED))
        if e is None or t is None:
            continue
        gap = e["mean"] - t["mean"]  # > 0: ESGD worse; with one seed there is no std to be within
        ok = gap <= 0 or (math.isfinite(t["std"]) and gap <= t["std"])
        rows.append({"task": task, "esgd": e["mean"], "tuned": t["mean"], "std": t["std"], "gap": gap, "ok": ok})
    measured = len(rows) == len(tasks) and bool(rows)
    return {"rows": rows, "measured": measured, "met": measured and all(r["ok"] for r in rows)}


def significant(tests: dict[str, dict], baselines: tuple[str, ...] = ("population", "pbt")) -> dict:
    """The goal's third check: the one-sided Wilcoxon test of ESGD against each of `baselines` at ALPHA."""
    rows = []
    for b in baselines:
        test = tests.get(b)
        p = test["p_better"] if test else None
        rows.append({"baseline": b, "run": test is not None, "p": p, "ok": p is not None and p < ALPHA})
    return {"rows": rows, "met": all(r["ok"] for r in rows)}


def favour(table: dict[tuple, dict], tasks: list[str], modes: list[str]) -> list[dict]:
    """Per task: the modes ordered by mean best fitness (best first), ESGD's rank among them."""
    out = []
    for task in tasks:
        ranked = sorted((m for m in modes if (task, m) in table), key=lambda m: table[task, m]["mean"])
        out.append({"task": task, "ranked": ranked, "esgd_rank": ranked.index(ESGD) + 1 if ESGD in ranked else None})
    return out
