"""Per-generation numbers of a run, computed from its history rows (the paper's Fig. 1 and 2)."""

import math
from collections import defaultdict
from statistics import fmean

TOP = 15
"""top15's upper end: the 15th best survivor (the paper's band), or the worst of fewer."""


def _phase(group: list[dict]) -> str:
    if any(r["role"] == "finetune" for r in group):
        return "finetune"
    if any(r["role"] == "copy" for r in group):  # PBT (esgd.core.pbt.COPY)
        return "exploit"
    return "evolution" if any(r["role"] in ("offspring", "reference") for r in group) else "sgd"


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def band_label(sizes) -> str:
    """What top15's upper end is, for populations of these sizes (µ survivors each): "15th best"
    when every µ >= 15; with one µ < 15 the µ-th best, i.e. the worst survivor ("8th best"; "best"
    for µ = 1); "worst survivor" for several µ < 15; "15th best or worst survivor" for a mix."""
    sizes = set(sizes)
    if min(sizes) >= TOP:
        return f"{_ordinal(TOP)} best"
    if len(sizes) == 1:
        (n,) = sizes
        return "best" if n == 1 else f"{_ordinal(n)} best"
    return "worst survivor" if max(sizes) <= TOP else f"{_ordinal(TOP)} best or worst survivor"


def summarize(rows: list[dict], m: int) -> list[dict]:
    """One summary per generation, over the individuals that survive it (the next population):
    phase (`evolution`: a generation of SGD and evolution, `sgd`: a generation of the modes without
    an evolution step, `exploit`: a generation of SGD and PBT's exploit and explore (pbt mode, when
    anyone was copied), `finetune`: the final fine-tuning), best, elite_mean (mean of the m best),
    mean, top15 ([best, 15th best]; with fewer than 15 survivors [best, worst survivor]: band_label
    names it), offspring_in_elite (share of the m elites that were born as offspring in that
    generation), best_optimizer (optimizer of the best individual after the SGD step), backoffs."""
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
                "phase": _phase(group),
                "best": fits[0],
                "elite_mean": fmean(fits[:m]),
                "mean": fmean(fits),
                "top15": [fits[0], fits[min(TOP, len(fits)) - 1]],
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
    """One line per committed generation, numbered as the report, plots, lineage and history
    number them (from 0): `gen  0 of 0..11  best ...` for the first of K = 12."""
    last = generations - 1
    no_offspring = summary["phase"] in ("sgd", "exploit")  # no evolution step (a PBT copy is no offspring)
    born = "   -" if no_offspring else f"{summary['offspring_in_elite']:4.0%}"
    return (
        f"gen {summary['generation']:>{len(str(last))}} of 0..{last}  best {summary['best']:.4f}  "
        f"elite-mean {summary['elite_mean']:.4f}  mean {summary['mean']:.4f}  "
        f"offspring-in-elite {born}  backoffs {summary['backoffs']:>3}  "
        f"best-optimizer {summary['best_optimizer']}  {seconds:6.1f}s"
    )
