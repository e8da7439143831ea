"""Annealing schedules: σ_k of the mutation and the lr-range factor, per generation."""

import math

from esgd.core.spec import Schedule


def value_at(schedule: Schedule, generation: int, generations: int) -> float:
    """The schedule's value at `generation` of `generations` (start at 0, end at the last one)."""
    if schedule.end is None or schedule.kind == "constant" or generations <= 1:
        return schedule.start
    t = min(max(generation / (generations - 1), 0.0), 1.0)
    start, end = schedule.start, schedule.end
    if schedule.kind == "linear":
        return start + (end - start) * t
    if schedule.kind == "exponential":
        return start * (end / start) ** t
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * t))  # cosine
