"""How many independent objects a step moves, or computes, at once: the policy of whoever runs the
step (an engine gives it to the worker's Run; for_store is the default, from what the store says of
itself), not of the store."""

import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from esgd.store.base import Store

T, R = TypeVar("T"), TypeVar("R")
CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@dataclass(frozen=True)
class Transfers:
    objects: int = 1
    """Items `each` runs at once, each reading or writing its own objects (a step does that once
    per individual)."""
    computing: int = 1
    """Items `each(..., computing=True)` runs at once, each mostly computation on its own objects
    (an offspring: noise, mean, checksum, which numpy and hashlib run outside Python's lock)."""

    @classmethod
    def for_store(cls, store: Store) -> "Transfers":
        """As many objects at once as the store's requests want (Store.objects_at_once); as many
        computations as the machine has cores (at most 4) on a local store, and on a remote one
        as many as its objects, a setting that then also bounds the evolve step's memory
        (docs/storage.md)."""
        if store.local:
            return cls(store.objects_at_once, min(4, CORES))
        return cls(store.objects_at_once, store.objects_at_once)

    def each(self, fn: Callable[[T], R], items: Iterable[T], computing: bool = False) -> list[R]:
        """[fn(item) for item in items], up to `objects` (or `computing`) at a time. The first error
        in the items' order is raised once the items before it are done; items not started by then
        are skipped. Every object is still written and committed on its own, so a step that dies
        midway leaves what one at a time leaves: some records committed, the rest redone by the
        next attempt, with the same values."""
        items, at_once = list(items), self.computing if computing else self.objects
        if len(items) < 2 or at_once < 2:
            return [fn(item) for item in items]
        with ThreadPoolExecutor(min(at_once, len(items))) as pool:
            return list(pool.map(fn, items))
