"""`esgd replay`: one network re-trained by an individual's optimizer schedule, without evolution
(the definitions: esgd.analysis.lineage)."""

from dataclasses import asdict

import torch

from esgd.analysis.lineage import HP, Lineage, hp_text, lineage, winner
from esgd.analysis.report import read_final, read_history
from esgd.core import hparams, keys
from esgd.core.hparams import HParams
from esgd.core.records import InitRecord
from esgd.worker import population
from esgd.worker.optimizers import State
from esgd.worker.run import Run
from esgd.worker.train import fitness, train


def start_hparams(spec, lin: Lineage, index: int) -> HParams:
    """Hyper-parameters step `index` of the schedule starts with. The history records what a step
    trained with; in the single mode that is the lr after its halvings, so a step starts from the
    previous step's recorded values (generation 0: the spec's `single`, fine-tuning: `finetune`)."""
    row = lin.schedule[index]
    if spec.mode == "single":
        if row["role"] == "finetune":
            return hparams.fixed(spec.finetune)
        previous = [r for r in lin.schedule[:index] if r["role"] == "parent"]
        return HParams(**{k: previous[-1][k] for k in HP}) if previous else hparams.fixed(spec.single)
    return HParams(**{k: row[k] for k in HP})


def replay(run: Run, member: str | None = None) -> tuple[list[dict], torch.nn.Module, Lineage]:
    """Re-train one network by `member`'s schedule (default: the winner); returns (one dict per
    step: generation, member, hyper-parameters, run_fitness, replay_fitness, backoffs), the model,
    the lineage."""
    rows = read_history(run.store, run.id)
    lin = lineage(rows, member or winner(read_final(run.store, run.id), rows))
    first, spec = lin.line[0], run.spec
    if first in lin.births:  # the reference model
        model = run.load_model(run.store.read(keys.reference(run.id), InitRecord).checkpoint)
    else:
        model = population.initial_model(run, first, population.initial_base(run))
    current = fitness(model, run.task, run.fitness_data)
    out, carried, last = [], None, None
    for index, row in enumerate(lin.schedule):
        hp = start_hparams(spec, lin, index)
        state = None  # sgd.optimizer_state: carry: as the train step, from the same member's previous generation
        if spec.sgd.optimizer_state == "carry" and row["role"] != "finetune":
            same = last is not None and (last["member"], last["generation"] + 1) == (row["member"], row["generation"])
            state = carried if same and last["optimizer"] == hp.optimizer else State()
        result = train(
            model,
            run.task,
            run.train_data,
            run.fitness_data,
            hp,
            row["epochs"],
            current,
            1.0 if spec.mode == "single" else spec.sgd.backoff,
            run.seed(row["generation"], row["member"]),
            halve_lr=spec.mode == "single",
            optimizer_state=state,
            patience=spec.sgd.patience_in(row["epochs"]),
        )
        carried, last = result.optimizer_state, row
        out.append(
            {
                "generation": row["generation"],
                "member": row["member"],
                "role": row["role"],
                **asdict(hp),
                "epochs": row["epochs"],
                "run_fitness_before": row["fitness_before"],
                "replay_fitness_before": current,
                "run_fitness": row["fitness"],
                "replay_fitness": result.fitness,
                "run_backoffs": row["backoffs"],
                "replay_backoffs": result.backoffs,
            }
        )
        current = result.fitness
    return out, model, lin


def replay_text(steps: list[dict], lin: Lineage, metric: tuple[str, float | None]) -> str:
    births = {lin.births[m]["generation"] for m in lin.line[1:]}
    lines = [
        f"replay of {lin.member} along its line {' -> '.join(lin.line)}",
        f"{'gen':>4}  {'member':<15} {'schedule':<52} {'run':>8} {'replay':>8}  back-offs (run/replay)",
    ]
    for s in steps:
        lines.append(
            f"{s['generation']:>4}  {s['member']:<15} {hp_text(s):<52} "
            f"{s['run_fitness']:>8.4f} {s['replay_fitness']:>8.4f}  {s['run_backoffs']}/{s['replay_backoffs']}"
            + ("   <- a birth on the line follows" if s["generation"] in births else "")
        )
    name, value = metric
    if steps:
        lines.append(
            f"replayed network: fitness {steps[-1]['replay_fitness']:.4f}"
            + ("" if value is None else f"  {name} {value:.4f}")
        )
    return "\n".join(lines)
