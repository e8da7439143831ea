"""The worker steps of a run. Each reads its inputs from the store and commits its outputs there;
a step whose commit record exists does nothing, so any step can be re-run safely."""

import json

import numpy as np
import torch

from esgd.core import hparams, keys
from esgd.core.errors import InputError
from esgd.core.manifest import HISTORY, MANIFEST, from_parquet, merge_parts, to_parquet
from esgd.core.plan import pack_groups, rounds
from esgd.core.rng import generator, int_seed
from esgd.core.schedules import value_at
from esgd.core.selection import elitist_select, pick_parents, rank, roulette_weights
from esgd.store import checkpoint
from esgd.store.base import NotFound, StoreError, attempt_id
from esgd.store.uri import read_uri
from esgd.worker import evolve as ops
from esgd.worker.packed import pack_fitness, train_pack
from esgd.worker.run import Run
from esgd.worker.train import fitness, metric, train as train_member
from esgd.worker.weights import load_into, to_checkpoint


def _ref(record: dict) -> dict:
    return {k: record[k] for k in ("checkpoint", "sha256", "size")}


def _row(record: dict, role: str, born: int, parents: list[str], hp: dict | None = None) -> dict:
    return {
        "member": record["member"], **_ref(record), "fitness": record["fitness"], "role": role, "born": born,
        "parents": parents, "elite": False, "hparams": json.dumps(hp, sort_keys=True) if hp else "",
    }


def _manifest(run: Run, key: str) -> list[dict]:
    """A manifest's rows. Manifests are written once (put_if_absent) and never change, so a
    process reads each one once (the local executor runs every step in one process)."""
    if key not in run.manifests:
        try:
            run.manifests[key] = from_parquet(run.store.get(key), MANIFEST, key)
        except NotFound:
            raise StoreError(f"{key} is not committed yet: run the earlier steps first") from None
    return [dict(row) for row in run.manifests[key]]


def _mark_elite(rows: list[dict], m: int) -> list[dict]:
    best = {int(i) for i in rank([r["fitness"] for r in rows])[:m]}
    return [dict(r, elite=i in best) for i, r in enumerate(rows)]


def _slots(rows: list[dict], members: tuple[int, int] | None) -> range:
    start, stop = members or (0, len(rows))
    if stop > len(rows):
        raise InputError(f"--members {start}..{stop} is outside the population (size {len(rows)})")
    return range(start, stop)


# Generation 0 -----------------------------------------------------------------------------------

def _initial_model(run: Run, member: str, base: bytes | None) -> torch.nn.Module:
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


def _reference(run: Run) -> dict | None:
    if not run.spec.reference.checkpoint:
        return None
    key = keys.reference(run.id)
    if not run.store.exists(key):
        model = run.new_model()
        load_into(model, *checkpoint.decode(read_uri(run.spec.reference.checkpoint)))
        ref = run.save_model(model, keys.reference_checkpoint(run.id, attempt_id()))  # re-encoded: our chunking
        run.store.commit_json(key, {"member": "reference", **ref, "fitness": fitness(model, run.task, run.fitness_data)})
    return run.store.get_json(key)


def init(run: Run) -> None:
    """Generation 0: µ individuals, random or perturbed from a checkpoint, with their fitness."""
    if run.store.exists(keys.parents(run.id, 0)):
        return
    base = read_uri(run.spec.population.init.checkpoint) if run.spec.population.init.checkpoint else None
    rows = []
    for index in range(run.spec.mu):
        member = keys.initial_id(index)
        key = keys.init_record(run.id, member)
        if not run.store.exists(key):
            model = _initial_model(run, member, base)
            ref = run.save_model(model, keys.init_checkpoint(run.id, member, attempt_id()))
            run.store.commit_json(key, {"member": member, **ref, "fitness": fitness(model, run.task, run.fitness_data)})
        rows.append(_row(run.store.get_json(key), "parent", 0, []))
    _reference(run)
    run.store.put_if_absent(keys.parents(run.id, 0), to_parquet(_mark_elite(rows, run.spec.m), MANIFEST))


# The SGD step -----------------------------------------------------------------------------------

def _train_rows(run: Run, rows: list[dict], slots: range, hp_of, epochs: int, generation: int, record_key) -> None:
    """Train the given population slots, in packs where the spec and the model allow it, and
    commit one record per individual. Packs are formed from the whole slot range, committed or
    not, and a pack with any uncommitted member is trained whole: a step that died between two
    commits trains exactly the same packs again, so its results do not depend on where it died."""
    rows = [rows[slot] for slot in slots]
    hps = [hp_of(row) for row in rows]
    size = run.pack_size(len(rows))
    while True:
        try:
            for group in pack_groups([hp["batch_size"] for hp in hps], size):
                if not all(run.store.each(run.store.exists, [record_key(rows[i]["member"]) for i in group])):
                    _train_group(run, [rows[i] for i in group], [hps[i] for i in group], epochs, generation, record_key)
            return
        except torch.cuda.OutOfMemoryError:
            if size == 1:
                raise
            size = max(1, size // 2)  # committed packs stay; the rest is retried in smaller packs
            torch.cuda.empty_cache()


def _train_group(run: Run, rows: list[dict], hps: list[dict], epochs: int, generation: int, record_key) -> None:
    spec = run.spec
    order = sorted(range(len(rows)), key=lambda i: hps[i]["optimizer"])  # each family's rows side by side: PackedOptimizer
    rows, hps = [rows[i] for i in order], [hps[i] for i in order]
    common = dict(
        task=run.task, train_data=run.train_data, fitness_data=run.fitness_data, epochs=epochs,
        p_backoff=1.0 if spec.mode == "single" else spec.sgd.backoff, halve_lr=spec.mode == "single",
    )
    seeds = [run.seed(generation, row["member"]) for row in rows]
    if len(rows) == 1:
        model = run.load_model(rows[0])
        results = [train_member(model, hp=hps[0], start_fitness=rows[0]["fitness"], seed=seeds[0], **common)]
        trained = [to_checkpoint(model)]
    else:
        pack = run.load_pack(rows)
        results = train_pack(pack, hps=hps, start_fitness=[r["fitness"] for r in rows], seeds=seeds,
                             bf16=spec.pack.bf16, compiled=spec.pack.compile, **common)
        trained = pack.checkpoints()

    def commit(row: dict, weights: tuple, result) -> None:  # the checkpoint, then the record naming it
        key = record_key(row["member"])
        ref = run.save_checkpoint(keys.checkpoint(key, attempt_id()), *weights)
        run.store.commit_json(key, {
            "member": row["member"], **ref, "fitness": result.fitness, "fitness_before": row["fitness"],
            "hparams": result.hparams, "backoffs": result.backoffs, "epochs": epochs, "epoch_fitness": result.epoch_fitness,
        })

    run.store.each(lambda item: commit(*item), zip(rows, trained, results))


def train(run: Run, generation: int, members: tuple[int, int] | None = None) -> None:
    """Train population slots [a, b) of `generation` for Ks epochs each, with back-off."""
    rows = _manifest(run, keys.parents(run.id, generation))
    previous = lambda row: json.loads(row["hparams"]) if row["hparams"] else None  # noqa: E731
    _train_rows(
        run, rows, _slots(rows, members),
        lambda row: hparams.for_generation(run.spec, generation, row["member"], previous(row)),
        run.spec.sgd.epochs, generation, lambda member: keys.train_record(run.id, generation, member),
    )


def _trained(run: Run, generation: int) -> list[dict]:
    def trained(row: dict) -> dict:
        try:
            rec = run.store.get_json(keys.train_record(run.id, generation, row["member"]))
        except NotFound:
            raise StoreError(f"member {row['member']} of generation {generation} is not trained yet") from None
        return dict(row, **_ref(rec), fitness=rec["fitness"], role="parent", hparams=json.dumps(rec["hparams"], sort_keys=True))

    return run.store.each(trained, _manifest(run, keys.parents(run.id, generation)))


def _pool(run: Run, generation: int, rnd: int) -> list[dict]:
    """The population an evolution round starts from."""
    if rnd == 0:
        return _trained(run, generation)
    return _manifest(run, keys.selected(run.id, generation, rnd - 1))


# The evolution step -----------------------------------------------------------------------------

def evolve(run: Run, generation: int, rnd: int) -> None:
    """λ offspring: ρ parents by roulette wheel, their mean plus N(0, σ_k²) noise."""
    spec = run.spec
    pool = _pool(run, generation, rnd)
    probabilities = roulette_weights(np.array([r["fitness"] for r in pool]), spec.evolution.roulette_floor)
    sigma = value_at(spec.evolution.sigma, generation, spec.generations)

    def offspring(index: int) -> None:
        child = keys.member_id(generation, rnd, index)
        key = keys.offspring_record(run.id, generation, rnd, child)
        if run.store.exists(key):
            return
        picks = pick_parents(generator(spec.seed, generation, child, "roulette"), probabilities, spec.population.rho)
        picks.sort(key=lambda j: (pool[j]["fitness"], j))
        parents = [pool[j] for j in picks]
        # Parents stream from the store: memory holds a few chunks per parent (of the few offspring
        # that Store.each makes at once), not µ models.
        pieces = ops.recombine_stream(run.store, parents, sigma, run.seed(generation, child))
        ref = run.store.put_stream(keys.offspring_checkpoint(run.id, generation, rnd, child, attempt_id()), pieces)
        run.store.commit_json(key, {"member": child, **ref, "parents": [p["member"] for p in parents], "sigma": sigma})

    run.store.each(offspring, range(spec.population.offspring), computing=True)  # each depends on no other


def evaluate(run: Run, generation: int, rnd: int, offspring: tuple[int, int] | None = None) -> None:
    """Fitness of offspring [a, b) of a round, in packs like training (packs formed from the whole
    range, so a re-run after a partial commit computes the same values)."""
    start, stop = offspring or (0, run.spec.population.offspring)
    if stop > run.spec.population.offspring:
        raise InputError(f"--offspring {start}..{stop} is outside 0..{run.spec.population.offspring}")
    children = [keys.member_id(generation, rnd, index) for index in range(start, stop)]
    record_key = lambda child: keys.fitness_record(run.id, generation, rnd, child)  # noqa: E731
    for group in pack_groups([0] * len(children), run.pack_size(len(children))):
        members = [children[i] for i in group]
        if all(run.store.each(run.store.exists, [record_key(child) for child in members])):
            continue
        try:
            refs = run.store.each(run.store.get_json, [keys.offspring_record(run.id, generation, rnd, c) for c in members])
        except NotFound:
            raise StoreError(f"offspring of round {rnd} are not committed yet: run evolve first") from None
        if len(refs) == 1:
            values = [fitness(run.load_model(refs[0]), run.task, run.fitness_data)]
        else:
            values = pack_fitness(run.load_pack(refs), run.task, run.fitness_data)
        records = [(record_key(child), {"member": child, "fitness": value}) for child, value in zip(members, values)]
        run.store.each(lambda record: run.store.commit_json(*record), records)


def _offspring(run: Run, generation: int, rnd: int) -> list[dict]:
    def born(index: int) -> dict:
        child = keys.member_id(generation, rnd, index)
        try:
            rec = run.store.get_json(keys.offspring_record(run.id, generation, rnd, child))
            fit = run.store.get_json(keys.fitness_record(run.id, generation, rnd, child))
        except NotFound:
            raise StoreError(f"offspring {child} is not evaluated yet: run evolve and evaluate first") from None
        return dict(_row(dict(rec, fitness=fit["fitness"]), "offspring", generation, rec["parents"]), sigma=rec["sigma"])

    out = run.store.each(born, range(run.spec.population.offspring))
    reference = _reference(run) if rnd == 0 else None  # once per generation, in its first round
    if reference is not None:
        out.append(dict(_row(reference, "reference", generation, []), member=keys.reference_id(generation, rnd), sigma=None))
    return out


def select(run: Run, generation: int, rnd: int) -> None:
    """m-elitist selection from µ+λ (+ the reference): the best m, plus µ-m drawn at random,
    without replacement, from the rest. Without evolution: the trained population moves on."""
    spec = run.spec
    last = rnd == rounds(spec) - 1
    out_key = keys.parents(run.id, generation + 1) if last else keys.selected(run.id, generation, rnd)
    if run.store.exists(out_key):
        if last:
            rebuild_history(run)
        return
    pool = _pool(run, generation, rnd)
    offspring = _offspring(run, generation, rnd) if spec.evolves else []
    if spec.evolves:
        candidates = pool + offspring
        losses = np.array([c["fitness"] for c in candidates])
        elite, others = elitist_select(generator(spec.seed, generation, "select", "select", rnd), losses, spec.mu, spec.m)
        survivors = [dict(candidates[i], elite=True) for i in elite] + [dict(candidates[i], elite=False) for i in others]
    else:
        survivors = _mark_elite(pool, spec.m)
    survivors = [{k: row[k] for k in MANIFEST.names} for row in survivors]
    if last:
        run.store.put(keys.history_part(run.id, generation), to_parquet(_history(run, generation, survivors, {rnd: offspring}), HISTORY))
    run.store.put_if_absent(out_key, to_parquet(survivors, MANIFEST))
    if last:
        rebuild_history(run)


# History ----------------------------------------------------------------------------------------

def _hp_columns(hp: dict | None) -> dict:
    hp = hp or {}
    return {k: hp.get(k) for k in ("optimizer", "lr", "momentum", "weight_decay", "beta1", "beta2", "batch_size")}


def _trained_row(generation: int, role: str, parents: list[str], rec: dict) -> dict:
    """A history row of an individual trained in a generation (or fine-tuned), from its record."""
    return {
        "generation": generation, "round": -1, "member": rec["member"], "role": role,
        "fitness": rec["fitness"], "fitness_before": rec["fitness_before"], **_hp_columns(rec["hparams"]),
        "parents": parents, "sigma": None, "backoffs": rec["backoffs"], "epochs": rec["epochs"],
    }


def _history(run: Run, generation: int, survivors: list[dict], offspring: dict[int, list[dict]]) -> list[dict]:
    """History rows of a generation; `offspring` holds the rounds' offspring already read."""
    selected = {r["member"] for r in survivors}
    elite = {r["member"] for r in survivors if r["elite"]}
    rows = [
        _trained_row(generation, "parent", parent["parents"],
                     run.store.get_json(keys.train_record(run.id, generation, parent["member"])))
        for parent in _manifest(run, keys.parents(run.id, generation))
    ]
    if run.spec.evolves:
        for rnd in range(rounds(run.spec)):
            for child in offspring.get(rnd) or _offspring(run, generation, rnd):
                rows.append({
                    "generation": generation, "round": rnd, "member": child["member"], "role": child["role"],
                    "fitness": child["fitness"], "fitness_before": None, **_hp_columns(None),
                    "parents": child["parents"], "sigma": child["sigma"], "backoffs": 0, "epochs": 0,
                })
    return [dict(r, elite=r["member"] in elite, selected=r["member"] in selected) for r in rows]


def rebuild_history(run: Run) -> None:
    """history.parquet at the run's root: all committed per-generation parts, in order."""
    try:
        previous = run.store.get(keys.history(run.id))
    except NotFound:
        previous = None
    merged = merge_parts(previous, run.store.list(f"{keys.run(run.id)}/history"), run.store.get, HISTORY)
    if merged is not None:
        run.store.put(keys.history(run.id), merged)


# After the last generation ----------------------------------------------------------------------

def finetune(run: Run, members: tuple[int, int] | None = None) -> None:
    """Fine-tune slots [a, b) of the final population with the small fixed lr of spec.finetune."""
    spec = run.spec
    rows = _manifest(run, keys.parents(run.id, spec.generations))
    _train_rows(
        run, rows, _slots(rows, members), lambda row: hparams.fixed(spec.finetune),
        spec.finetune.epochs, spec.generations, lambda member: keys.final_record(run.id, member),
    )


def finish(run: Run) -> None:
    """The final population (fine-tuned if configured), its best individual and its error metric."""
    spec = run.spec
    key = keys.final_manifest(run.id)
    if not run.store.exists(key):
        rows = _manifest(run, keys.parents(run.id, spec.generations))
        if spec.finetune.epochs > 0:
            history = []
            for i, row in enumerate(rows):
                rec = run.store.get_json(keys.final_record(run.id, row["member"]))
                rows[i] = dict(row, **_ref(rec), fitness=rec["fitness"], hparams=json.dumps(rec["hparams"], sort_keys=True))
                history.append(dict(_trained_row(spec.generations, "finetune", row["parents"], rec), selected=True))
            rows = _mark_elite(rows, spec.m)
            history = [dict(h, elite=r["elite"]) for h, r in zip(history, rows)]
            run.store.put(keys.history_part(run.id, spec.generations), to_parquet(history, HISTORY))
        best = min(rows, key=lambda r: r["fitness"])
        summary = {
            "best_member": best["member"], "best_fitness": best["fitness"], **_ref(best),
            "metric_name": run.task.metric_name, "metric": metric(run.load_model(best), run.task, run.fitness_data, best["fitness"]),
        }
        run.store.commit_json(keys.final_summary(run.id), summary)
        run.store.put_if_absent(key, to_parquet(rows, MANIFEST))
    rebuild_history(run)
