"""The steps of a run, as stages of worker commands. Shared by the local executor and the Argo
workflows: a stage's steps may run in parallel; stages run one after the other."""

from dataclasses import dataclass

from esgd.core.spec import RunSpec


@dataclass(frozen=True)
class Step:
    command: str  # init, train, evolve, evaluate, select, finetune, finish
    generation: int | None = None
    round: int | None = None
    members: tuple[int, int] | None = None  # half-open range of population slots
    offspring: tuple[int, int] | None = None  # half-open range of offspring indices

    def args(self) -> list[str]:
        """Arguments of `esgd-worker` after the command and `--run URI`."""
        out: list[str] = []
        if self.generation is not None:
            out += ["--gen", str(self.generation)]
        if self.round is not None:
            out += ["--round", str(self.round)]
        if self.members is not None:
            out += ["--members", f"{self.members[0]}..{self.members[1]}"]
        if self.offspring is not None:
            out += ["--offspring", f"{self.offspring[0]}..{self.offspring[1]}"]
        return out


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


def generation_stages(spec: RunSpec, generation: int, pack: int, shard: int) -> list[list[Step]]:
    """Stages of one generation: train in packs of `pack` individuals, then per round evolve,
    evaluate offspring in shards of `shard`, select."""
    stages = [[Step("train", generation, members=r) for r in shards(spec.mu, pack)]]
    for rnd in range(rounds(spec)):
        if spec.evolves:
            stages.append([Step("evolve", generation, rnd)])
            stages.append([Step("evaluate", generation, rnd, offspring=r) for r in shards(spec.population.offspring, shard)])
        stages.append([Step("select", generation, rnd)])
    return stages


def final_stages(spec: RunSpec, pack: int) -> list[list[Step]]:
    stages = []
    if spec.finetune.epochs > 0:
        stages.append([Step("finetune", members=r) for r in shards(spec.mu, pack)])
    stages.append([Step("finish")])
    return stages
