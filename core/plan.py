"""A run's plan: phases -> stages -> steps. Every engine runs this plan (esgd.controller.driver).

A step is one worker command (`esgd-worker <command> --run URI <options>`); the steps of a stage
may run in parallel; stages run one after the other; a phase (one generation, or the final
stages) is committed when its marker key exists in the store. How many steps a stage is cut into
(`pack` individuals per train step, `shard` offspring per evaluate step) is the engine's choice:
the outcome is the same whatever the cut.
"""

from dataclasses import dataclass

from esgd.core import keys
from esgd.core.errors import InputError
from esgd.core.spec import RunSpec

DEVICE_COMMANDS = ("init", "train", "evaluate", "finetune")
"""Commands that train or evaluate networks (GPU pods on a cluster); the others (evolve: vectors,
select and finish: records) need no accelerator."""
COMMANDS = ("init", "train", "evolve", "evaluate", "select", "finetune", "finish")


@dataclass(frozen=True)
class Step:
    command: str  # one of COMMANDS
    generation: int | None = None
    round: int | None = None
    members: tuple[int, int] | None = None  # half-open range of population slots
    offspring: tuple[int, int] | None = None  # half-open range of offspring indices

    def options(self) -> dict[str, str]:
        """The step's options as the worker's command line spells them ({"gen": "3", "members":
        "0..4"}): the one encoding of a step, read back by esgd-worker, used as Argo parameters."""
        out = {}
        if self.generation is not None:
            out["gen"] = str(self.generation)
        if self.round is not None:
            out["round"] = str(self.round)
        for name, span in (("members", self.members), ("offspring", self.offspring)):
            if span is not None:
                out[name] = f"{span[0]}..{span[1]}"
        return out

    def argv(self, run_uri: str, values: dict[str, str] | None = None) -> list[str]:
        """`esgd-worker` arguments: the command, the run URI, the options (with `values` in place
        of the option values, when given: Argo parameter references)."""
        options = self.options() if values is None else values
        return [
            self.command,
            "--run",
            run_uri,
            *(part for name, value in options.items() for part in (f"--{name}", value)),
        ]

    @property
    def on_device(self) -> bool:
        return self.command in DEVICE_COMMANDS


@dataclass(frozen=True)
class Phase:
    generation: int | None  # None: the final stages (fine-tuning, finish)
    stages: tuple[tuple[Step, ...], ...]

    @property
    def name(self) -> str:
        return "the final stages" if self.generation is None else f"generation {self.generation}"

    @property
    def tag(self) -> str:
        """`g0003` for a generation, `final` for the final stages (in Workflow names and labels)."""
        return "final" if self.generation is None else f"g{self.generation:04d}"

    def marker(self, run_id: str) -> str:
        """The key whose existence commits the phase: the next generation's parents manifest, or
        the final manifest."""
        if self.generation is None:
            return keys.final_manifest(run_id)
        return keys.parents(run_id, self.generation + 1)

    def steps(self) -> list[Step]:
        return [step for stage in self.stages for step in stage]


def shards(total: int, size: int) -> list[tuple[int, int]]:
    """[0, total) cut into half-open ranges of at most `size`."""
    size = max(1, size)
    return [(start, min(start + size, total)) for start in range(0, total, size)]


def pack_groups(batch_sizes: list[int], size: int) -> list[list[int]]:
    """Indices grouped into packs: individuals sharing a batch size (they step in lockstep), in
    order of first appearance, at most `size` per pack."""
    by_batch: dict[int, list[int]] = {}
    for index, batch in enumerate(batch_sizes):
        by_batch.setdefault(batch, []).append(index)
    return [group[i : i + size] for group in by_batch.values() for i in range(0, len(group), max(1, size))]


def parse_range(text: str) -> tuple[int, int]:
    """`a..b` (half-open, like Python's range) -> (a, b)."""
    head, sep, tail = text.partition("..")
    if not sep or not head.isdigit() or not tail.isdigit() or int(head) > int(tail):
        raise ValueError(f"expected a range a..b with a <= b, got {text!r}")
    return int(head), int(tail)


def rounds(spec: RunSpec) -> int:
    """Evolution rounds per generation; the modes without evolution still run one select (round 0)
    that promotes the trained population to the next generation."""
    return spec.evolution.rounds if spec.evolves else 1


def generation(spec: RunSpec, number: int, pack: int, shard: int) -> Phase:
    """Generation `number`: init first in generation 0; train in packs of `pack` individuals;
    then per round evolve, evaluate offspring in shards of `shard`, select."""
    if not 0 <= number < spec.generations:
        raise InputError(f"generation {number} is outside 0..{spec.generations - 1}")
    stages = [(Step("init"),)] if number == 0 else []
    stages.append(tuple(Step("train", number, members=r) for r in shards(spec.mu, pack)))
    for rnd in range(rounds(spec)):
        if spec.evolves:
            stages.append((Step("evolve", number, rnd),))
            stages.append(
                tuple(Step("evaluate", number, rnd, offspring=r) for r in shards(spec.population.offspring, shard))
            )
        stages.append((Step("select", number, rnd),))
    return Phase(number, tuple(stages))


def final(spec: RunSpec, pack: int) -> Phase:
    """Fine-tuning (if configured) in packs of `pack`, then finish."""
    stages = []
    if spec.finetune.epochs > 0:
        stages.append(tuple(Step("finetune", members=r) for r in shards(spec.mu, pack)))
    stages.append((Step("finish"),))
    return Phase(None, tuple(stages))


def phases(spec: RunSpec, pack: int, shard: int) -> list[Phase]:
    """Every phase of a run, in order."""
    return [generation(spec, g, pack, shard) for g in range(spec.generations)] + [final(spec, pack)]
