"""The worker steps of a run. Each reads its inputs from the store and commits its outputs there;
a step whose commit record exists does nothing, so any step can be re-run safely."""

from dataclasses import replace

import numpy as np
import torch

from esgd.core import hparams, keys, pbt
from esgd.core.errors import InputError
from esgd.core.plan import GENERATION_COMMANDS, Step, pack_groups, rounds
from esgd.core.records import FinalSummary, FitnessRecord, InitRecord, Member, OffspringRecord, TrainRecord
from esgd.core.rng import generator
from esgd.core.schedules import value_at
from esgd.core.selection import PARENTS, SURVIVORS
from esgd.core.tables import to_parquet
from esgd.store.base import NotFound, StoreError, attempt_id
from esgd.worker import evolve as ops
from esgd.worker import history, population, preflight
from esgd.worker.optimizers import State
from esgd.worker.packed import pack_fitness, train_pack
from esgd.worker.run import Run
from esgd.worker.task import blamed_on
from esgd.worker.train import fitness, metric
from esgd.worker.train import train as train_member
from esgd.worker.weights import to_checkpoint


def run(run: Run, step: Step) -> None:
    """Run one step of the plan: what `esgd-worker` and the in-process engine both call."""
    if step.command in GENERATION_COMMANDS and step.generation is None:
        raise InputError(f"{step.command} needs --gen")
    if step.generation is not None and not 0 <= step.generation < run.spec.generations:
        raise InputError(f"--gen {step.generation} is outside 0..{run.spec.generations - 1}")
    generation, rnd = step.generation, step.round or 0
    where = f"the {step.command} step" + ("" if generation is None else f" of generation {generation}")
    with blamed_on(run.spec.task, lambda: run.task, where):  # the task's own code failing: one line, exit 2
        {
            "init": lambda: init(run),
            "train": lambda: train(run, generation, step.members),
            "evolve": lambda: evolve(run, generation, rnd),
            "evaluate": lambda: evaluate(run, generation, rnd, step.offspring),
            "select": lambda: select(run, generation, rnd),
            "finetune": lambda: finetune(run, step.members),
            "finish": lambda: finish(run),
        }[step.command]()


# Generation 0 -----------------------------------------------------------------------------------


def init(run: Run) -> None:
    """Generation 0: µ individuals, random or perturbed from a checkpoint, with their fitness. The
    spec's task is checked first (preflight.check): a run created without its task loaded (by the
    cluster controller) fails here, in its first pod, with one line and exit code 2."""
    if run.store.exists(keys.parents(run.id, 0)):
        return
    preflight.check(run.spec, run.task)
    base = population.initial_base(run)
    members = []
    for index in range(run.spec.mu):
        member = keys.initial_id(index)
        key = keys.init_record(run.id, member)
        try:
            record = run.store.read(key, InitRecord)
        except NotFound:
            model = population.initial_model(run, member, base)
            ref = run.save_model(model, keys.init_checkpoint(run.id, member, attempt_id()))
            record = run.store.commit(key, InitRecord(member, ref, fitness(model, run.task, run.fitness_data)))
        members.append(Member(member, record.checkpoint, record.fitness, "parent", 0, (), False, None))
    population.reference(run)
    run.store.put_if_absent(keys.parents(run.id, 0), to_parquet(population.mark_elite(members, run.spec.m), Member))


# The SGD step -----------------------------------------------------------------------------------


def _train_members(
    run: Run, members: list[Member], slots: range, hp_of, epochs: int, generation: int, record_key, previous=None
) -> None:
    """Train the given population slots, in packs where the spec and the model allow it, and
    commit one record per individual. Packs are formed from the whole slot range, committed or
    not, and a pack with any uncommitted member is trained whole: a step that died between two
    commits trains exactly the same packs again, so its results do not depend on where it died.
    `previous(member, hp)`: the optimizer state a member starts from, to carry on (None: reset)."""
    members = [members[slot] for slot in slots]
    hps = [hp_of(member) for member in members]
    size = run.pack_size(len(members))
    while True:
        try:
            for group in pack_groups([hp.batch_size for hp in hps], size):
                if not all(run.transfers.each(run.store.exists, [record_key(members[i].member) for i in group])):
                    _train_pack(
                        run,
                        [members[i] for i in group],
                        [hps[i] for i in group],
                        epochs,
                        generation,
                        record_key,
                        previous,
                    )
            return
        except torch.cuda.OutOfMemoryError:
            if size == 1:
                raise
            size = max(1, size // 2)  # committed packs stay; the rest is retried in smaller packs
            torch.cuda.empty_cache()


def _train_pack(
    run: Run,
    members: list[Member],
    hps: list[hparams.HParams],
    epochs: int,
    generation: int,
    record_key,
    previous=None,
) -> None:
    spec = run.spec
    order = sorted(range(len(members)), key=lambda i: hps[i].optimizer)  # families side by side: PackedOptimizer
    members, hps = [members[i] for i in order], [hps[i] for i in order]
    states = None
    if previous is not None:
        states = run.transfers.each(lambda pair: previous(*pair), [(m.member, hp) for m, hp in zip(members, hps)])
    common = dict(
        task=run.task,
        train_data=run.train_data,
        fitness_data=run.fitness_data,
        epochs=epochs,
        p_backoff=1.0 if spec.mode == "single" else spec.sgd.backoff,
        patience=spec.sgd.patience_in(epochs),
        halve_lr=spec.mode == "single",
    )
    seeds = [run.seed(generation, m.member) for m in members]
    if len(members) == 1:
        model = run.load_model(members[0].checkpoint)
        results = [
            train_member(
                model,
                hp=hps[0],
                start_fitness=members[0].fitness,
                seed=seeds[0],
                optimizer_state=None if states is None else states[0],
                **common,
            )
        ]
        trained = [to_checkpoint(model)]
    else:
        pack = run.load_pack([m.checkpoint for m in members])
        results = train_pack(
            pack,
            hps=hps,
            start_fitness=[m.fitness for m in members],
            seeds=seeds,
            bf16=spec.pack.bf16,
            compiled=spec.pack.compile,
            optimizer_states=states,
            **common,
        )
        trained = pack.checkpoints()

    def commit(member: Member, weights: tuple, result) -> None:  # the blobs, then the record naming them
        key, attempt = record_key(member.member), attempt_id()
        ref = run.save_checkpoint(keys.checkpoint(key, attempt), *weights)
        state = None
        if result.optimizer_state is not None:
            state = run.save_checkpoint(keys.optimizer_state(key, attempt), *result.optimizer_state.to_checkpoint())
        record = TrainRecord(
            member=member.member,
            checkpoint=ref,
            fitness=result.fitness,
            fitness_before=member.fitness,
            hparams=result.hparams,
            backoffs=result.backoffs,
            epochs=epochs,
            epoch_fitness=tuple(result.epoch_fitness),
            optimizer_state=state,
        )
        run.store.commit(key, record)

    run.transfers.each(lambda item: commit(*item), zip(members, trained, results))


def train(run: Run, generation: int, members: tuple[int, int] | None = None) -> None:
    """Train population slots [a, b) of `generation` for Ks epochs each, with back-off."""
    parents = population.manifest(run, keys.parents(run.id, generation))

    def trained_before(member: str) -> TrainRecord | None:
        """How `member` trained in the previous generation (None: it did not train then)."""
        if generation == 0:
            return None
        try:
            return run.store.read(keys.train_record(run.id, generation - 1, member), TrainRecord)
        except NotFound:
            return None

    def previous(member: str, hp: hparams.HParams) -> State:
        """sgd.optimizer_state: carry. The state `member` ended the previous generation with, if it
        trained then with hp's family; else a fresh one (an offspring, a PBT copy, a family change)."""
        record = trained_before(member)
        if record is None or record.hparams.optimizer != hp.optimizer or record.optimizer_state is None:
            return State()
        # on the host: training copies it to the device, into the optimizer's own state
        return State.from_checkpoint(*run.read_checkpoint(record.optimizer_state), "cpu")

    def inherited(member: Member) -> hparams.HParams | None:
        """sgd.hparams: inherit. What an offspring's fittest parent trained with in the generation
        it was born in (None: not an offspring, or a parent that never trained, such as the reference)."""
        if run.spec.sgd.hparams != "inherit" or member.hparams is not None or not member.parents:
            return None
        record = trained_before(member.parents[0])
        return None if record is None else record.hparams

    _train_members(
        run,
        parents,
        population.slots(parents, members),
        lambda m: hparams.for_generation(run.spec, generation, m.member, m.hparams, inherited(m)),
        run.spec.sgd.epochs,
        generation,
        lambda member: keys.train_record(run.id, generation, member),
        previous if run.spec.sgd.optimizer_state == "carry" else None,
    )


# The evolution step -----------------------------------------------------------------------------


def evolve(run: Run, generation: int, rnd: int) -> None:
    """λ offspring: ρ parents each (evolution.parents: the roulette wheel), their mean plus N(0, σ_k²) noise."""
    spec = run.spec
    pool = population.pool(run, generation, rnd)
    losses = np.array([m.fitness for m in pool])
    pick = PARENTS[spec.evolution.parents]
    sigma = value_at(spec.evolution.sigma, generation, spec.generations)

    def offspring(index: int) -> None:
        child = keys.member_id(generation, rnd, index)
        key = keys.offspring_record(run.id, generation, rnd, child)
        if run.store.exists(key):
            return
        picks = pick(generator(spec.seed, generation, child, "roulette"), losses, spec.population.rho, spec.evolution)
        parents = [pool[j] for j in sorted(picks, key=lambda j: (pool[j].fitness, j))]  # fittest first
        # Parents stream from the store: memory holds a few chunks per parent (of the few offspring
        # that Transfers.each makes at once), not µ models.
        pieces = ops.recombine_stream(
            run.blobs,
            [p.checkpoint for p in parents],
            sigma,
            run.seed(generation, child),
            relative=spec.evolution.sigma_scale == "rms",
        )
        ref = run.blobs.put_stream(keys.offspring_checkpoint(run.id, generation, rnd, child, attempt_id()), pieces)
        run.store.commit(key, OffspringRecord(child, ref, tuple(p.member for p in parents), sigma))

    run.transfers.each(offspring, range(spec.population.offspring), computing=True)  # each depends on no other


def evaluate(run: Run, generation: int, rnd: int, offspring: tuple[int, int] | None = None) -> None:
    """Fitness of offspring [a, b) of a round, in packs like training (packs formed from the whole
    range, so a re-run after a partial commit computes the same values)."""
    start, stop = offspring or (0, run.spec.population.offspring)
    if stop > run.spec.population.offspring:
        raise InputError(f"--offspring {start}..{stop} is outside 0..{run.spec.population.offspring}")
    children = [keys.member_id(generation, rnd, index) for index in range(start, stop)]

    def record_key(child: str) -> str:
        return keys.fitness_record(run.id, generation, rnd, child)

    def made(child: str) -> OffspringRecord:
        try:
            return run.store.read(keys.offspring_record(run.id, generation, rnd, child), OffspringRecord)
        except NotFound:
            raise StoreError(f"offspring of round {rnd} are not committed yet: run evolve first") from None

    for group in pack_groups([0] * len(children), run.pack_size(len(children))):
        members = [children[i] for i in group]
        if all(run.transfers.each(run.store.exists, [record_key(child) for child in members])):
            continue
        refs = [record.checkpoint for record in run.transfers.each(made, members)]
        if len(refs) == 1:
            values = [fitness(run.load_model(refs[0]), run.task, run.fitness_data)]
        else:
            values = pack_fitness(run.load_pack(refs), run.task, run.fitness_data)
        records = [(record_key(child), FitnessRecord(child, value)) for child, value in zip(members, values)]
        run.transfers.each(lambda record: run.store.commit(*record), records)


def select(run: Run, generation: int, rnd: int) -> None:
    """Survivors from µ+λ (+ the reference) by evolution.survivors: m-elitist selection keeps the
    best m, plus µ-m drawn at random, without replacement, from the rest. Without evolution: the
    trained population moves on (in mode pbt with its bottom quantile replaced by copies of the top's).
    The last round writes the generation's history."""
    spec = run.spec
    last = rnd == rounds(spec) - 1
    out_key = keys.parents(run.id, generation + 1) if last else keys.selected(run.id, generation, rnd)
    if run.store.exists(out_key):
        return
    parents, records = population.trained(run, generation) if rnd == 0 or last else (None, None)
    pool = parents if rnd == 0 else population.manifest(run, keys.selected(run.id, generation, rnd - 1))
    born = population.offspring(run, generation, rnd) if spec.evolves else []
    if spec.evolves:
        candidates = pool + [child for child, _ in born]
        losses = np.array([c.fitness for c in candidates])
        choose = SURVIVORS[spec.evolution.survivors]
        elite, others = choose(generator(spec.seed, generation, "select", "select", rnd), losses, spec.mu, spec.m)
        survivors = [replace(candidates[i], elite=True) for i in elite] + [
            replace(candidates[i], elite=False) for i in others
        ]
    elif spec.mode == "pbt":  # the bottom quantile takes copies of the top's, explored (esgd.core.pbt)
        survivors = population.mark_elite(pbt.next_population(spec, generation, pool), spec.m)
    else:
        survivors = population.mark_elite(pool, spec.m)
    if last:
        births = (
            [born if r == rnd else population.offspring(run, generation, r) for r in range(rounds(spec))]
            if spec.evolves
            else history.copies(survivors)
        )
        as_begun = population.manifest(run, keys.parents(run.id, generation))
        history.write_part(run, generation, history.generation_rows(generation, as_begun, records, births, survivors))
        history.rebuild(run)  # before the commit: a committed generation's history is merged
    run.store.put_if_absent(out_key, to_parquet(survivors, Member))


# After the last generation ----------------------------------------------------------------------


def finetune(run: Run, members: tuple[int, int] | None = None) -> None:
    """Fine-tune slots [a, b) of the final population with the small fixed lr of spec.finetune."""
    spec = run.spec
    final = population.manifest(run, keys.parents(run.id, spec.generations))
    _train_members(
        run,
        final,
        population.slots(final, members),
        lambda m: hparams.fixed(spec.finetune),
        spec.finetune.epochs,
        spec.generations,
        lambda member: keys.final_record(run.id, member),
    )


def finish(run: Run) -> None:
    """The final population (fine-tuned if configured), its best individual and its error metric."""
    spec = run.spec
    key = keys.final_manifest(run.id)
    if run.store.exists(key):
        return
    members = population.manifest(run, keys.parents(run.id, spec.generations))
    if spec.finetune.epochs > 0:
        records = [run.store.read(keys.final_record(run.id, m.member), TrainRecord) for m in members]
        tuned = [
            replace(m, checkpoint=r.checkpoint, fitness=r.fitness, hparams=r.hparams) for m, r in zip(members, records)
        ]
        members = population.mark_elite(tuned, spec.m)
        rows = [
            history.trained_row(spec.generations, "finetune", m.parents, r, m.elite, True)
            for m, r in zip(members, records)
        ]
        history.write_part(run, spec.generations, rows)
    # a PBT copy ties with its donor (the same weights): the donor, which trained with its hparams, wins
    best = min(members, key=lambda m: (m.fitness, m.role == pbt.COPY))
    model = run.load_model(best.checkpoint)
    value = metric(model, run.task, run.fitness_data, best.fitness)
    test = tested = None
    if run.test_data is not None:  # scored once, for the winner only: nothing was chosen by it
        test = fitness(model, run.task, run.test_data)
        tested = metric(model, run.task, run.test_data, test)
    summary = FinalSummary(best.member, best.fitness, best.checkpoint, run.task.metric_name, value, test, tested)
    run.store.commit(keys.final_summary(run.id), summary)
    history.rebuild(run)  # before the commit: a finished run's history is whole
    run.store.put_if_absent(key, to_parquet(members, Member))
