"""Where everything of a run lives in the store. Keys are relative to the store's root.

runs/<run>/spec.yaml                                   frozen spec (+ package version)
runs/<run>/init/reference.json                         reference model record (optional)
runs/<run>/gen-<k>/parents.parquet                     parents manifest of generation k
runs/<run>/gen-<k>/train/<member>.json                 train result record (commit marker)
runs/<run>/gen-<k>/train/<member>.<attempt>.arrow      trained checkpoint of that attempt
runs/<run>/gen-<k>/train/<member>.optimizer.<attempt>.arrow   its optimizer state (sgd.optimizer_state: carry)
runs/<run>/gen-<k>/round-<r>/offspring/<id>.json       offspring record (recombination, commit marker)
runs/<run>/gen-<k>/round-<r>/offspring/<id>.<attempt>.arrow
runs/<run>/gen-<k>/round-<r>/fitness/<id>.json         offspring fitness (commit marker)
runs/<run>/gen-<k>/round-<r>/selected.parquet          survivors of round r
runs/<run>/history/gen-<k>.parquet                     history rows of generation k
runs/<run>/history.parquet                             all history rows (merged from the parts)
runs/<run>/final/...                                   fine-tuning records and final manifest
runs/<run>/extended/k<K>.json                          extension of the run to K generations (optional)
runs/<run>/extended/lock.json                          held while an extension is under way (store/lock.py)
"""

import re
from typing import NamedTuple

from esgd.core.errors import InputError

RUNS = "runs"

RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
"""A run id: 1 to 128 ASCII letters, digits, `.`, `_` and `-`, starting with a letter or a digit (so
never `.` or `..`): one path segment of every store key and URI as it is, nothing to encode."""


def check_run_id(run_id: str, what: str = "--run-id") -> str:
    """`run_id` if it is a valid run id, else InputError (exit 2) naming it; checked before anything
    is written, by every command that takes a run id (esgd run, compare, controller, compile)."""
    if RUN_ID.fullmatch(run_id):
        return run_id
    shown = repr(run_id) if len(run_id) <= 60 else f"{run_id[:40]!r}... ({len(run_id)} characters)"
    raise InputError(
        f"{what} {shown}: a run id is 1 to 128 ASCII letters, digits, '.', '_' or '-', "
        "starting with a letter or a digit"
    )


# One small function per key, the same shape on purpose (`duplicates` pairs them): each key's layout
# is written once, here, and every reader and writer asks for it by name.


def run(run_id: str) -> str:
    return f"{RUNS}/{run_id}"


def spec(run_id: str) -> str:
    return f"{run(run_id)}/spec.yaml"


def gen(run_id: str, generation: int) -> str:
    return f"{run(run_id)}/gen-{generation:04d}"


def parents(run_id: str, generation: int) -> str:
    return f"{gen(run_id, generation)}/parents.parquet"


def train_record(run_id: str, generation: int, member: str) -> str:
    return f"{gen(run_id, generation)}/train/{member}.json"


def checkpoint(record: str, attempt: str) -> str:
    """The checkpoint one attempt writes, next to the record that names it once committed:
    <record without .json>.<attempt>.arrow (no folder per member: on a local disk each new folder
    costs as much as a small checkpoint's write)."""
    return f"{record.removesuffix('.json')}.{attempt}.arrow"


def optimizer_state(record: str, attempt: str) -> str:
    """The optimizer state one attempt writes (sgd.optimizer_state: carry), next to its checkpoint:
    <record without .json>.optimizer.<attempt>.arrow (a checkpoint of the record's kind to keys.kind)."""
    return f"{record.removesuffix('.json')}.optimizer.{attempt}.arrow"


def round_(run_id: str, generation: int, rnd: int) -> str:
    return f"{gen(run_id, generation)}/round-{rnd}"


def offspring_record(run_id: str, generation: int, rnd: int, child: str) -> str:
    return f"{round_(run_id, generation, rnd)}/offspring/{child}.json"


def offspring_checkpoint(run_id: str, generation: int, rnd: int, child: str, attempt: str) -> str:
    return checkpoint(offspring_record(run_id, generation, rnd, child), attempt)


def fitness_record(run_id: str, generation: int, rnd: int, child: str) -> str:
    return f"{round_(run_id, generation, rnd)}/fitness/{child}.json"


def selected(run_id: str, generation: int, rnd: int) -> str:
    return f"{round_(run_id, generation, rnd)}/selected.parquet"


def history_parts(run_id: str) -> str:
    return f"{run(run_id)}/history"


def history_part(run_id: str, generation: int) -> str:
    return f"{history_parts(run_id)}/gen-{generation:04d}.parquet"


def history(run_id: str) -> str:
    return f"{run(run_id)}/history.parquet"


def reference(run_id: str) -> str:
    return f"{run(run_id)}/init/reference.json"


def reference_checkpoint(run_id: str, attempt: str) -> str:
    return checkpoint(reference(run_id), attempt)


def init_record(run_id: str, member: str) -> str:
    return f"{run(run_id)}/init/{member}.json"


def init_checkpoint(run_id: str, member: str, attempt: str) -> str:
    return checkpoint(init_record(run_id, member), attempt)


def final_record(run_id: str, member: str) -> str:
    return f"{run(run_id)}/final/train/{member}.json"


def final_manifest(run_id: str) -> str:
    return f"{run(run_id)}/final/manifest.parquet"


def member_id(generation: int, rnd: int, index: int) -> str:
    """Id of offspring `index` born in round `rnd` of `generation`."""
    return f"g{generation:04d}-r{rnd}-o{index:03d}"


def copy_id(generation: int, slot: int) -> str:
    """Id of the PBT copy that takes population slot `slot` at the end of `generation` (esgd.core.pbt)."""
    return f"g{generation:04d}-c{slot:03d}"


def initial_id(index: int) -> str:
    return f"init-{index:03d}"


def reference_id(generation: int, rnd: int) -> str:
    return f"g{generation:04d}-r{rnd}-ref"


def final_summary(run_id: str) -> str:
    return f"{run(run_id)}/final/summary.json"


def extension_lock(run_id: str) -> str:
    """Held while the run is being extended (esgd.store.lock): one extension at a time."""
    return f"{run(run_id)}/extended/lock.json"


def extension(run_id: str, generations: int) -> str:
    """The record of an extension of the run to `generations` (esgd.controller.runs.extend)."""
    return f"{run(run_id)}/extended/k{generations:04d}.json"


# What an object of a run is, read back from its key, and how to recover from its loss -------------


class Kind(NamedTuple):
    """What a run's object is: `name` (spec, init, reference, train, offspring, fitness, selected,
    parents, history-part, history, finetune, final-manifest, final-summary, or other), the
    generation (and round) whose step wrote it, and whether it is a checkpoint (.arrow)."""

    run: str
    name: str
    generation: int | None = None
    round: int | None = None
    checkpoint: bool = False


_KINDS = (  # relative to runs/<run>/: (pattern, name); a checkpoint sits next to its record
    (r"spec\.yaml", "spec"),
    (r"init/reference\.(json|[0-9a-f]+\.arrow)", "reference"),
    (r"init/[^/]+\.(json|[0-9a-f]+\.arrow)", "init"),
    (r"gen-(?P<gen>\d+)/parents\.parquet", "parents"),
    (r"gen-(?P<gen>\d+)/train/[^/]+\.(json|[0-9a-f]+\.arrow)", "train"),
    (r"gen-(?P<gen>\d+)/round-(?P<round>\d+)/offspring/[^/]+\.(json|[0-9a-f]+\.arrow)", "offspring"),
    (r"gen-(?P<gen>\d+)/round-(?P<round>\d+)/fitness/[^/]+\.json", "fitness"),
    (r"gen-(?P<gen>\d+)/round-(?P<round>\d+)/selected\.parquet", "selected"),
    (r"history/gen-(?P<gen>\d+)\.parquet", "history-part"),
    (r"history\.parquet", "history"),
    (r"final/train/[^/]+\.(json|[0-9a-f]+\.arrow)", "finetune"),
    (r"final/manifest\.parquet", "final-manifest"),
    (r"final/summary\.json", "final-summary"),
)


def kind(key: str) -> Kind:
    """What the object at `key` (a key of a run) is; name `other` for anything else."""
    head, _, rest = key.partition("/")
    run_id, _, rel = rest.partition("/")
    if head != RUNS or not run_id:
        return Kind("", "other")
    for pattern, name in _KINDS:
        found = re.fullmatch(pattern, rel)
        if found:
            groups = found.groupdict()
            number = {k: int(v) for k, v in groups.items() if v is not None}
            return Kind(run_id, name, number.get("gen"), number.get("round"), rel.endswith(".arrow"))
    return Kind(run_id, "other")


def rewind(generation: int, also: str = "") -> str:
    """How to run a run again from `generation` on (what resume does: esgd.controller.driver): the
    objects to delete (`also` first). Generation k's parents manifest (in gen-k) commits generation
    k-1, whose select writes it again, the same, from its records; later history parts and the
    final stages would otherwise outlive what they were made from."""
    return (
        f"delete {also}gen-{generation:04d} and every later gen-*, history/gen-{generation:04d}.parquet and every "
        f"later history part, and final/, then resume the run: it runs again from generation {generation}"
    )


def recovery(key: str, store: str | None = None) -> str:
    """How to recover from the damage or loss of the object at `key` of a run in the store at
    URI `store` (if known): what the user does, in one sentence (docs/storage.md, "Integrity")."""
    what = kind(key)
    k = what.generation
    if what.name == "spec":
        return (
            "restore it from a copy, or delete it and run `esgd run` again with the spec the run was created with "
            f"and --run-id {what.run}: the spec is frozen again and the run resumes"
        )
    if what.name in ("history", "history-part"):
        command = (
            f"`esgd verify {store.rstrip('/')}/{run(what.run)} --repair`" if store else "`esgd verify RUN --repair`"
        )
        return f"it is derived: {command} rebuilds it from the records that committed it"
    if what.name == "parents":
        writer = "the init step" if k == 0 else f"generation {k - 1}'s select step"
        return f"delete it and resume the run: {writer} writes it again from the committed records"
    if what.name == "selected":
        return f"delete it and resume the run: generation {k}'s select step writes it again when the run needs it"
    if what.name == "final-manifest":
        return "delete it and resume the run: the finish step writes it again"
    if what.name == "final-summary":
        return "delete it and final/manifest.parquet, then resume the run: the finish step writes both again"
    if what.name == "finetune":
        return "delete final/ and resume the run: fine-tuning and the finish step run again"
    if what.name == "reference":
        return "delete init/reference.json and resume the run: the reference model is committed again"
    if what.name == "init":
        return f"restore it from a copy, or {rewind(0, also='init/, ')}"
    if k is not None:
        return f"restore it from a copy, or {rewind(k)}"
    return "restore it from a copy" if what.run else "restore it from a copy, or import it again (esgd data import)"
