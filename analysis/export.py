"""`esgd export`: an individual's weights as safetensors, which PyTorch and the rest of the
ecosystem load without this package, and what it was trained with as JSON beside them.

The weights are those of the run's answer (the winner of its final summary: fine-tuned, if the
spec fine-tunes), or of a named member as the run last stored it (its last SGD step, its birth,
or its fine-tuning). The stored checkpoint's size and SHA-256 are checked against the record
that committed it before a byte is written. The safetensors file (format: an 8-byte
little-endian header length, a JSON header giving each tensor's dtype, shape and byte range, then
the raw little-endian bytes) holds the model's state dict under its own names, every float tensor
in its own dtype, integer buffers (BatchNorm's num_batches_tracked) too. The JSON holds the run,
the member, its fitness (and the task's metric for the winner), the task and its arguments (to
build the model), the frozen spec, and the lineage as `esgd lineage --json` prints it: the line of
fittest parents, the genealogy, and the schedule of optimizers and hyper-parameters it followed.
Both files are written whole under temporary names, then renamed: nothing is left half-written.
"""

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from esgd.analysis.lineage import lineage, to_json, winner
from esgd.analysis.report import read_final, read_history, run_spec
from esgd.core import keys
from esgd.core.errors import InputError
from esgd.core.metrics import finite
from esgd.core.pbt import COPY
from esgd.core.records import BlobRef, InitRecord, OffspringRecord, TrainRecord
from esgd.store import checkpoint
from esgd.store.base import Store
from esgd.store.blobs import Blobs
from esgd.store.uri import run_uri

DTYPES = {
    "float64": "F64",
    "float32": "F32",
    "float16": "F16",
    "bfloat16": "BF16",
    "int64": "I64",
    "int32": "I32",
    "int16": "I16",
    "int8": "I8",
    "uint8": "U8",
    "bool": "BOOL",
}
"""torch dtype name (as checkpoints record it) -> safetensors dtype."""


@dataclass(frozen=True)
class Source:
    """Where an individual's weights are: its checkpoint, and what the history says of it."""

    member: str
    checkpoint: BlobRef
    fitness: float
    generation: int
    role: str  # parent (trained), offspring (born), copy (PBT), finetune, reference
    winner: bool


def _record(store: Store, run_id: str, row: dict) -> BlobRef:
    """The checkpoint of a history row's individual, from the record that committed it."""
    member, generation, role = row["member"], row["generation"], row["role"]
    if role == "parent":
        return store.read(keys.train_record(run_id, generation, member), TrainRecord).checkpoint
    if role == "finetune":
        return store.read(keys.final_record(run_id, member), TrainRecord).checkpoint
    if role == "offspring":
        return store.read(keys.offspring_record(run_id, generation, row["round"], member), OffspringRecord).checkpoint
    if role == COPY:  # a PBT copy holds its donor's checkpoint as trained in that generation
        return store.read(keys.train_record(run_id, generation, row["parents"][0]), TrainRecord).checkpoint
    return store.read(keys.reference(run_id), InitRecord).checkpoint


def locate(store: Store, run_id: str, member: str | None, rows: list[dict], final) -> Source:
    """The weights of `member` (default: the run's winner, or for an unfinished run the best
    survivor of its last committed generation) as the run last stored them."""
    target = member or winner(final, rows)
    own = [r for r in rows if r["member"] == target]
    if not own:
        raise InputError(f"member {target!r} is not in the run's history (`esgd lineage --json` lists them)")
    last = max(own, key=lambda r: (r["generation"], r["round"]))
    if final is not None and final.best_member == target:
        return Source(target, final.checkpoint, final.best_fitness, last["generation"], last["role"], True)
    return Source(target, _record(store, run_id, last), last["fitness"], last["generation"], last["role"], False)


def _bfloat16(values: np.ndarray) -> np.ndarray:
    """bfloat16 bits, rounded to nearest even as torch rounds float32 (NaN stays a quiet NaN). From
    a float64 vector (a model mixing float64 and bfloat16 tensors) it goes through float32: rounded
    twice, a value may differ in its last bit from torch's direct conversion."""
    bits = values.astype("<f4").view("<u4").astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype("<u2")
    nan = np.isnan(values)
    rounded[nan] = ((bits[nan] >> 16) | 0x40).astype("<u2")
    return rounded


def tensors(layout: checkpoint.Layout, vector: np.ndarray) -> list[tuple[str, str, list[int], bytes]]:
    """(name, safetensors dtype, shape, little-endian bytes) of every tensor of a checkpoint, in
    state-dict order: the float entries cut from the vector in their own dtype, then the integer
    buffers."""
    out = []
    for e in layout.entries:
        if e.dtype not in DTYPES:
            raise InputError(f"tensor {e.name}: dtype {e.dtype} has no safetensors equivalent")
        values = vector[e.offset : e.offset + e.numel]
        data = _bfloat16(values) if e.dtype == "bfloat16" else values.astype(np.dtype(e.dtype).newbyteorder("<"))
        out.append((e.name, DTYPES[e.dtype], list(e.shape), data.tobytes()))
    for name, spec in layout.ints.items():
        if spec["dtype"] not in DTYPES:
            raise InputError(f"tensor {name}: dtype {spec['dtype']} has no safetensors equivalent")
        data = np.asarray(spec["values"], dtype=np.dtype(spec["dtype"]).newbyteorder("<"))
        out.append((name, DTYPES[spec["dtype"]], list(spec["shape"]), data.tobytes()))
    return out


def safetensors_bytes(items: list[tuple[str, str, list[int], bytes]], metadata: dict[str, str]) -> bytes:
    """The safetensors encoding of the tensors: header length (u64 little-endian), the JSON
    header (padded with spaces to a multiple of 8 bytes), the tensors' bytes in order."""
    header: dict = {"__metadata__": metadata}
    offset = 0
    for name, dtype, shape, data in items:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + b"".join(data for *_, data in items)


def _target(out: Path) -> tuple[Path, Path]:
    """(weights file, JSON file beside it); InputError for an --out that cannot be written."""
    if out.is_dir():
        raise InputError(f"--out {out}: is a directory; name the weights file, e.g. {out / 'winner.safetensors'}")
    if out.suffix == ".json":
        raise InputError(f"--out {out}: name the weights file (e.g. winner.safetensors); the JSON goes beside it")
    if not out.parent.is_dir():
        raise InputError(f"--out {out}: folder {out.parent} does not exist")
    return out, out.with_suffix(".json")


def _write(files: dict[Path, bytes]) -> None:
    """Every file written whole under a temporary name in its folder, then all renamed into place."""
    temps: dict[Path, str] = {}
    try:
        for path, data in files.items():
            fd, temps[path] = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
        for path, temp in temps.items():
            os.replace(temp, path)
    finally:
        for temp in temps.values():
            if os.path.exists(temp):
                os.unlink(temp)


def export(store: Store, run_id: str, member: str | None, out: Path) -> tuple[Path, Path, Source]:
    """Write `member`'s weights (default: the winner) to `out` as safetensors and its lineage as
    JSON beside it (`out` with the suffix .json); returns (weights file, JSON file, source)."""
    weights_path, json_path = _target(out)
    spec = run_spec(store, run_id)
    rows, final = read_history(store, run_id), read_final(store, run_id)
    source = locate(store, run_id, member, rows, final)
    lin = lineage(rows, source.member)
    data = Blobs(store).get(source.checkpoint)  # size and checksum checked: IntegrityError names the key
    layout, vector = checkpoint.decode(data)
    uri = run_uri(store, run_id)
    metadata = {
        "format": "pt",
        "esgd.run": uri,
        "esgd.member": source.member,
        "esgd.checkpoint": source.checkpoint.sha256,
    }
    weights = safetensors_bytes(tensors(layout, vector), metadata)
    summary = {
        "run": uri,
        "member": source.member,
        "winner": source.winner,
        "finished": final is not None,
        "fitness": source.fitness,
        "metric_name": final.metric_name if final else None,
        "metric": final.metric if final and source.winner else None,
        "stored_as": {"role": source.role, "generation": source.generation},
        "weights": {
            "file": weights_path.name,
            "format": "safetensors",
            "sha256": hashlib.sha256(weights).hexdigest(),
            "checkpoint": {"key": source.checkpoint.key, "sha256": source.checkpoint.sha256},
        },
        "task": spec.task,
        "task_args": spec.task_args,
        "spec": spec.model_dump(mode="json"),
        "lineage": to_json(lin),
    }
    text = json.dumps(finite(summary), indent=2, allow_nan=False, default=str) + "\n"
    _write({weights_path: weights, json_path: text.encode()})
    return weights_path, json_path, source
