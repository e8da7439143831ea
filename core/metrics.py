"""Per-generation numbers of a run, computed from its history rows (the paper's Fig. 1 and 2)."""

import math
from collections import defaultdict
from statistics import fmean


def summarize(rows: list[dict], m: int) -> list[dict]:
    """One summary per generation, over the individuals that survive it (the next population):
    best, elite_mean (mean of the m best), mean, top15 ([best, 15th best], or all if fewer),
    offspring_in_elite (share of the m elites that were born as offspring in that generation),
    best_optimizer (optimizer of the best individual after the SGD step), backoffs."""
    by_generation: dict[int, list[dict]] = defaultdict(list)
    for row in rows:
        by_generation[row["generation"]].append(row)
    out = []
    for generation in sorted(by_generation):
        group = by_generation[generation]
        survivors = sorted((r for r in group if r["selected"]), key=lambda r: r["fitness"])
        fits = [r["fitness"] for r in survivors]
        elites = [r for r in survivors if r["elite"]]
        trained = [r for r in group if r["role"] in ("parent", "finetune")]
        best_trained = min(trained, key=lambda r: r["fitness"]) if trained else None
        out.append(
            {
                "generation": generation,
                "phase": "finetune" if any(r["role"] == "finetune" for r in group) else "evolution",
                "best": fits[0],
                "elite_mean": fmean(fits[:m]),
                "mean": fmean(fits),
                "top15": [fits[0], fits[min(14, len(fits) - 1)]],
                "offspring_in_elite": sum(r["role"] == "offspring" for r in elites) / len(elites) if elites else 0.0,
                "best_optimizer": best_trained["optimizer"] if best_trained else None,
                "backoffs": sum(r["backoffs"] or 0 for r in trained),
            }
        )
    return out


def finite(value):
    """A JSON-safe copy: non-finite floats (a diverged individual's fitness) become None (null)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def progress_line(summary: dict, generations: int, seconds: float) -> str:
    return (
        f"gen {summary['generation'] + 1:>3}/{generations}  best {summary['best']:.4f}  "
        f"elite-mean {summary['elite_mean']:.4f}  mean {summary['mean']:.4f}  "
        f"offspring-in-elite {summary['offspring_in_elite']:4.0%}  backoffs {summary['backoffs']:>3}  "
        f"best-optimizer {summary['best_optimizer']}  {seconds:6.1f}s"
    )
