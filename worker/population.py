"""The population as the steps read it from the store: manifests, trained parents, offspring, the
initial individuals and the reference model."""

from dataclasses import replace

import torch

from esgd.core import keys
from esgd.core.errors import InputError
from esgd.core.records import FitnessRecord, InitRecord, Member, OffspringRecord, TrainRecord
from esgd.core.rng import int_seed
from esgd.core.selection import rank
from esgd.store import checkpoint
from esgd.store.base import NotFound, StoreError, attempt_id
from esgd.store.history import offspring_entry, reference_entry
from esgd.store.tables import read_rows
from esgd.store.uri import read_uri
from esgd.worker.run import Run
from esgd.worker.train import fitness
from esgd.worker.weights import load_into


def manifest(run: Run, key: str) -> list[Member]:
    """A manifest's members. Manifests are written once (put_if_absent) and never change, so a
    process reads each one once (the local engine runs every step in one process)."""
    if key not in run.manifests:
        try:
            run.manifests[key] = read_rows(run.store, key, Member)  # checksum checked: IntegrityError names it
        except NotFound:
            raise StoreError(f"{key} is not committed yet: run the earlier steps first") from None
    return list(run.manifests[key])


def mark_elite(members: list[Member], m: int) -> list[Member]:
    best = {int(i) for i in rank([x.fitness for x in members])[:m]}
    return [replace(x, elite=i in best) for i, x in enumerate(members)]


def slots(members: list[Member], span: tuple[int, int] | None) -> range:
    start, stop = span or (0, len(members))
    if stop > len(members):
        raise InputError(f"--members {start}..{stop} is outside the population (size {len(members)})")
    return range(start, stop)


def initial_model(run: Run, member: str, base: bytes | None) -> torch.nn.Module:
    """Individual `member` of generation 0: a fresh model under its own seed, or the `base`
    checkpoint plus N(0, σ²) noise of population.init.sigma."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int_seed(run.spec.seed, 0, member, "init"))
        model = run.task.model()
        if base is not None:
            load_into(model, *checkpoint.decode(base))
            sigma = run.spec.population.init.sigma
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(torch.randn_like(p) * sigma)
    return model.to(run.device)


def initial_base(run: Run) -> bytes | None:
    """The checkpoint generation 0 starts from (population.init.checkpoint), if any."""
    path = run.spec.population.init.checkpoint
    return read_uri(path) if path else None


def reference(run: Run) -> InitRecord | None:
    """The run's reference model (reference.checkpoint), committed once, re-encoded in the run's
    own checkpoint format; None when the spec names none."""
    if not run.spec.reference.checkpoint:
        return None
    key = keys.reference(run.id)
    try:
        return run.store.read(key, InitRecord)
    except NotFound:
        model = run.new_model()
        load_into(model, *checkpoint.decode(read_uri(run.spec.reference.checkpoint)))
        ref = run.save_model(model, keys.reference_checkpoint(run.id, attempt_id()))
        return run.store.commit(key, InitRecord("reference", ref, fitness(model, run.task, run.fitness_data)))


def trained(run: Run, generation: int) -> tuple[list[Member], list[TrainRecord]]:
    """The parents of `generation` after their SGD step, and their train records."""
    parents = manifest(run, keys.parents(run.id, generation))

    def record(member: Member) -> TrainRecord:
        try:
            return run.store.read(keys.train_record(run.id, generation, member.member), TrainRecord)
        except NotFound:
            raise StoreError(f"member {member.member} of generation {generation} is not trained yet") from None

    records = run.transfers.each(record, parents)
    members = [
        replace(m, checkpoint=r.checkpoint, fitness=r.fitness, role="parent", hparams=r.hparams)
        for m, r in zip(parents, records)
    ]
    return members, records


def pool(run: Run, generation: int, rnd: int) -> list[Member]:
    """The population an evolution round starts from: the trained parents, or the round before's survivors."""
    if rnd == 0:
        return trained(run, generation)[0]
    return manifest(run, keys.selected(run.id, generation, rnd - 1))


def offspring(run: Run, generation: int, rnd: int) -> list[tuple[Member, float | None]]:
    """The round's offspring with their fitness, and the σ each was made with; in a generation's
    first round also the reference model (σ None), inserted unchanged."""

    def born(index: int) -> tuple[Member, float]:
        child = keys.member_id(generation, rnd, index)
        try:
            made = run.store.read(keys.offspring_record(run.id, generation, rnd, child), OffspringRecord)
            fit = run.store.read(keys.fitness_record(run.id, generation, rnd, child), FitnessRecord)
        except NotFound:
            raise StoreError(f"offspring {child} is not evaluated yet: run evolve and evaluate first") from None
        return offspring_entry(generation, child, made, fit)

    out = run.transfers.each(born, range(run.spec.population.offspring))
    ref = reference(run) if rnd == 0 else None  # once per generation, in its first round
    if ref is not None:
        out.append(reference_entry(generation, rnd, ref))
    return out
