"""Where everything of a run lives in the store. Keys are relative to the store's root.

runs/<run>/spec.yaml                                   frozen spec (+ package version)
runs/<run>/init/reference.json                         reference model record (optional)
runs/<run>/gen-<k>/parents.parquet                     parents manifest of generation k
runs/<run>/gen-<k>/train/<member>.json                 train result record (commit marker)
runs/<run>/gen-<k>/train/<member>.<attempt>.arrow      trained checkpoint of that attempt
runs/<run>/gen-<k>/round-<r>/offspring/<id>.json       offspring record (recombination, commit marker)
runs/<run>/gen-<k>/round-<r>/offspring/<id>.<attempt>.arrow
runs/<run>/gen-<k>/round-<r>/fitness/<id>.json         offspring fitness (commit marker)
runs/<run>/gen-<k>/round-<r>/selected.parquet          survivors of round r
runs/<run>/history/gen-<k>.parquet                     history rows of generation k
runs/<run>/history.parquet                             all history rows (merged from the parts)
runs/<run>/final/...                                   fine-tuning records and final manifest
"""

RUNS = "runs"

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


def initial_id(index: int) -> str:
    return f"init-{index:03d}"


def reference_id(generation: int, rnd: int) -> str:
    return f"g{generation:04d}-r{rnd}-ref"


def final_summary(run_id: str) -> str:
    return f"{run(run_id)}/final/summary.json"
