"""Selection operators: the roulette wheel and m-elitist selection, and the registries the spec
names them from. Lower fitness (loss) is better."""

import numpy as np


def roulette_weights(losses: np.ndarray, floor: float = 0.05) -> np.ndarray:
    """Selection probabilities that grow with fitness quality.

    A loss L_i becomes the positive weight (L_max - L_i) + floor * (L_max - L_min): the best
    individual gets the largest share, the worst keeps a small one (the floor), so every
    individual can still be picked. Equal losses (or floor 0 with one distinct value) give a
    uniform wheel. Non-finite losses get weight 0 unless every loss is non-finite.
    """
    losses = np.asarray(losses, dtype=np.float64)
    finite = np.isfinite(losses)
    if not finite.any():
        return np.full(len(losses), 1.0 / len(losses))
    best, worst = losses[finite].min(), losses[finite].max()
    spread = worst - best
    if spread == 0:
        weights = finite.astype(np.float64)
    else:
        weights = np.where(finite, (worst - losses) + floor * spread, 0.0)
        if weights.sum() == 0:
            weights = finite.astype(np.float64)
    return weights / weights.sum()


def pick_parents(rng: np.random.Generator, probabilities: np.ndarray, rho: int) -> list[int]:
    """ρ distinct parents drawn by the roulette wheel (without replacement, renormalising)."""
    p = np.asarray(probabilities, dtype=np.float64)
    if rho > int((p > 0).sum()):
        p = np.where(p > 0, p, 1e-12)  # fewer viable parents than ρ: let the rest in, barely
    return [int(i) for i in rng.choice(len(p), size=rho, replace=False, p=p / p.sum())]


def rank(losses: np.ndarray) -> np.ndarray:
    """Indices from best to worst; ties keep pool order (stable), NaN counts as worst."""
    losses = np.asarray(losses, dtype=np.float64)
    return np.argsort(np.where(np.isnan(losses), np.inf, losses), kind="stable")


def elitist_select(rng: np.random.Generator, losses: np.ndarray, mu: int, m: int) -> tuple[list[int], list[int]]:
    """m-elitist selection from a pool: the best m, plus µ-m drawn at random without replacement
    from the rest. Returns (elite indices best first, other survivors in draw order)."""
    order = rank(losses)
    if not 0 < m <= mu <= len(order):
        raise ValueError(f"need 0 < m ({m}) <= mu ({mu}) <= pool size ({len(order)})")
    elite = [int(i) for i in order[:m]]
    rest = np.sort(order[m:])
    others = [int(i) for i in rng.choice(rest, size=mu - m, replace=False)] if mu > m else []
    return elite, others


# Registries: the spec names an operator (evolution.parents, evolution.survivors); adding one is a
# function of the same signature registered here or from your own module (docs/architecture.md).


def roulette(rng: np.random.Generator, losses: np.ndarray, rho: int, evolution) -> list[int]:
    """ρ distinct parents by the roulette wheel of roulette_weights (evolution.roulette_floor)."""
    return pick_parents(rng, roulette_weights(losses, evolution.roulette_floor), rho)


PARENTS = {"roulette": roulette}
"""name -> fn(rng, losses of the pool, rho, the spec's evolution section) -> ρ distinct pool indices."""
SURVIVORS = {"elitist": elitist_select}
"""name -> fn(rng, losses of the pool, mu, m) -> (elite indices best first, other survivors)."""


def check(registry: dict, what: str, name: str) -> str:
    """`name` if `registry` has it; ValueError for a spec field's validator otherwise."""
    if name not in registry:
        raise ValueError(f"unknown {what} {name!r} (known: {', '.join(sorted(registry))})")
    return name
