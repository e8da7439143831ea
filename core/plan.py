"""A run's plan: phases -> stages -> steps. Every engine runs this plan (esgd.controller.driver).

A step is one worker command (`esgd-worker <command> --run URI <options>`); the steps of a stage
may run in parallel; stages run one after the other; a phase (one generation, or the final
stages) is committed when its marker key exists in the store. How many steps a stage is cut into
(`pack` individuals per train step, `shard` offspring per evaluate step) is the engine's choice:
the same algorithm whatever the cut, and the same history for the same cut; across cuts, float32
results agree to rounding only (one individual and a pack of several are computed by different
kernels: tests/test_packing.py checks them in float64).
"""

from dataclasses import dataclass

from esgd.core import keys
from esgd.core.errors import InputError
from esgd.core.spec import RunSpec

COMMANDS = ("init", "train", "evolve", "evaluate", "select", "finetune", "finish")
DEVICE_COMMANDS = ("init", "train", "evaluate", "finetune")
"""Commands that train or evaluate networks (GPU pods on a cluster); the others (evolve: vectors,
select and finish: records) need no accelerator."""
GENERATION_COMMANDS = ("train", "evolve", "evaluate", "select")
"""Commands that act on one generation: they need its number (--gen)."""
FINAL = "final"
"""The final phase's name where a generation number could stand (`--generation final`, Workflow names)."""

OPTIONS = {"gen": "generation", "round": "round", "members": "members", "offspring": "offspring"}
"""A step's options as the worker's command line names them -> the Step fields they set."""
RANGES = ("members", "offspring")


@dataclass(frozen=True)
class Step:
    command: str  # one of COMMANDS
    generation: int | None = None
    round: int | None = None
    members: tuple[int, int] | None = None  # half-open range of population slots
    offspring: tuple[int, int] | None = None  # half-open range of offspring indices

    def options(self) -> dict[str, str]:
        """The step's options as the worker's command line spells them ({"gen": "3", "members":
        "0..4"}): the one encoding of a step, read back by Step.parse, used as Argo parameters."""
        out = {}
        for name, field in OPTIONS.items():
            value = getattr(self, field)
            if value is not None:
                out[name] = f"{value[0]}..{value[1]}" if name in RANGES else str(value)
        return out

    @classmethod
    def parse(cls, command: str, options: dict[str, str | None]) -> "Step":
        """The step of `command` with these options (as options() writes them; None: not given).
        InputError (exit 2) names a value that is not one."""
        values = {}
        for name, text in options.items():
            if text is None:
                continue
            try:
                values[OPTIONS[name]] = parse_range(text) if name in RANGES else int(text)
            except ValueError:
                expected = "a range a..b with a <= b" if name in RANGES else "a whole number"
                raise InputError(f"--{name}: expected {expected}, got {text!r}") from None
        return cls(command, **values)

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
    after: int | None = None
    """The final stages of an extended run: the generations they follow, in their tag, so that an
    engine never takes the final stages the run had before its extension for these (Workflow names)."""

    @property
    def name(self) -> str:
        return "the final stages" if self.generation is None else f"generation {self.generation}"

    @property
    def tag(self) -> str:
        """`g0003` for a generation, `final` for the final stages, `final-k0020` for those of a run
        extended to 20 generations (in Workflow names and labels)."""
        if self.generation is not None:
            return f"g{self.generation:04d}"
        return FINAL if self.after is None else f"{FINAL}-k{self.after:04d}"

    def marker(self, run_id: str) -> str:
        """The key whose existence commits the phase (every step commits before it)."""
        return keys.final_manifest(run_id) if self.generation is None else generation_marker(run_id, self.generation)

    def steps(self) -> list[Step]:
        return [step for stage in self.stages for step in stage]


def generation_marker(run_id: str, generation: int) -> str:
    """The key that commits a generation: the next generation's parents manifest."""
    return keys.parents(run_id, generation + 1)


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
    """`a..b` (half-open, like Python's range) -> (a, b); ValueError if it is not one."""
    head, sep, tail = text.partition("..")
    if not sep or not head.isdigit() or not tail.isdigit() or int(head) > int(tail):
        raise ValueError(text)
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


def final(spec: RunSpec, pack: int, extended: bool = False) -> Phase:
    """Fine-tuning (if configured) in packs of `pack`, then finish; `extended`: the run was extended
    to spec.generations (its final stages are tagged with them)."""
    stages = []
    if spec.finetune.epochs > 0:
        stages.append(tuple(Step("finetune", members=r) for r in shards(spec.mu, pack)))
    stages.append((Step("finish"),))
    return Phase(None, tuple(stages), spec.generations if extended else None)


def phases(spec: RunSpec, pack: int, shard: int, extended: bool = False) -> list[Phase]:
    """Every phase of a run, in order."""
    return [generation(spec, g, pack, shard) for g in range(spec.generations)] + [final(spec, pack, extended)]
