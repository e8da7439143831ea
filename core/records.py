"""Typed records: what the steps commit to the store, and the rows of manifests and history.

One encoding each: a record is a JSON object (its fields, nested records as objects, plus its
schema name and version under "schema"); a row is a Parquet row whose columns derive from its
fields (esgd.core.tables). Both are checked on read: a record of another schema, a missing or
mistyped field, raise SchemaError naming the key, instead of being misread; a record or table whose
bytes are not those written (torn, altered: it does not parse, or its checksum does not match)
raises Damaged naming the key and how to recover (esgd.core.keys.recovery).

Checksums: a record carries the SHA-256 of its own canonical JSON (sorted keys, without the
checksum) under "checksum"; a table carries the SHA-256 of its values in its Parquet metadata
(esgd.core.tables). Objects written before checksums existed have none and are read unchecked.
"""

import hashlib
import json
from dataclasses import dataclass, field
from functools import cache
from typing import Annotated, ClassVar

from pydantic import ConfigDict, Field, TypeAdapter, ValidationError

from esgd.core import keys
from esgd.core.errors import InputError
from esgd.core.hparams import HParams

STRICT = ConfigDict(extra="forbid")  # pydantic's validation of these dataclasses: unknown fields are errors


class SchemaError(InputError):
    """A stored record or table of an unknown or different schema, or with fields it should not have."""


OTHER_VERSION = "written by another version of esgd? finish the run with the version that started it"
CHECKSUM = "checksum"  # a record's own checksum: the SHA-256 of its canonical JSON without this field


class Damaged(InputError):
    """A stored object whose bytes are not those written: torn (e.g. by an OS crash before they
    reached the disk) or altered, so that it does not parse or its checksum does not match. The
    message names the key and how to recover; the store layer turns it into its IntegrityError
    (esgd.store.base.damaged), with the store's URI."""

    def __init__(self, key: str, reason: str):
        self.key, self.reason = key, reason
        super().__init__(f"{key} is damaged ({reason}); {keys.recovery(key)}")


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class BlobRef:
    """Where a checksummed object lives: key, SHA-256 and size (a checkpoint, a dataset shard)."""

    __pydantic_config__ = STRICT
    key: str
    sha256: str
    size: int = field(metadata={"arrow": "int64"})


# Records (JSON) -------------------------------------------------------------------------------------
# Each record type is declared in full, though they share a shape (`duplicates` pairs them): the
# declaration is the stored format, read by people and by the validator, one class per format.


@dataclass(frozen=True)
class InitRecord:
    """An individual of generation 0, or the run's reference model."""

    SCHEMA: ClassVar[str] = "init/1"
    __pydantic_config__ = STRICT
    member: str
    checkpoint: BlobRef
    fitness: float


@dataclass(frozen=True)
class TrainRecord:
    """An individual after its SGD step (or fine-tuning)."""

    SCHEMA: ClassVar[str] = "train/1"
    __pydantic_config__ = STRICT
    member: str
    checkpoint: BlobRef
    fitness: float
    fitness_before: float
    hparams: HParams  # as trained with (single mode: the lr after its halvings)
    backoffs: int
    epochs: int
    epoch_fitness: tuple[float, ...]
    # Absent from the JSON when None, so that records of runs without it keep their bytes.
    optimizer_state: Annotated[BlobRef | None, Field(exclude_if=lambda ref: ref is None)] = None
    """The optimizer state it ended with (sgd.optimizer_state: carry; esgd.worker.optimizers.State),
    a checkpoint blob its next generation's training starts from; None with reset."""


@dataclass(frozen=True)
class OffspringRecord:
    """An offspring: the mean of its parents (fittest first) plus N(0, sigma²) noise."""

    SCHEMA: ClassVar[str] = "offspring/1"
    __pydantic_config__ = STRICT
    member: str
    checkpoint: BlobRef
    parents: tuple[str, ...]
    sigma: float


@dataclass(frozen=True)
class FitnessRecord:
    """An offspring's fitness."""

    SCHEMA: ClassVar[str] = "fitness/1"
    __pydantic_config__ = STRICT
    member: str
    fitness: float


@dataclass(frozen=True)
class FinalSummary:
    """The run's answer: its best individual after the last generation (and fine-tuning)."""

    SCHEMA: ClassVar[str] = "final/1"
    __pydantic_config__ = STRICT
    best_member: str
    best_fitness: float
    checkpoint: BlobRef
    metric_name: str
    metric: float | None
    test_fitness: float | None = None
    """The best individual's loss on the task's test set (never trained or selected on), if it has one."""
    test_metric: float | None = None
    """Its metric on the test set."""


@dataclass(frozen=True)
class ExtensionRecord:
    """A run raised from `before` to `after` generations, continuing from `committed` (esgd.controller.runs.extend)."""

    SCHEMA: ClassVar[str] = "extension/2"
    __pydantic_config__ = STRICT
    before: int
    after: int
    committed: int


@cache
def _adapter(cls) -> TypeAdapter:
    return TypeAdapter(cls)


def to_dict(record) -> dict:
    """A record or row as plain values: nested records as dicts (pydantic's serializer: a fraction of
    dataclasses.asdict's cost, which a step pays once per individual)."""
    return _adapter(type(record)).dump_python(record)


def encode(record) -> bytes:
    """The record as JSON: its schema, its fields, and the checksum of both."""
    body = {"schema": record.SCHEMA, **to_dict(record)}
    return json.dumps({**body, CHECKSUM: digest(json.dumps(body, sort_keys=True))}, sort_keys=True).encode()


def checked_json(data: bytes, where: str) -> dict:
    """A stored JSON object, its checksum (if it has one) verified and removed; Damaged naming
    `where` if it does not parse or does not match."""
    try:
        raw = json.loads(data)
    except ValueError:  # UnicodeDecodeError included
        raise Damaged(where, "not a readable JSON record: torn or altered") from None
    if not isinstance(raw, dict):
        raise Damaged(where, "not a JSON object: altered")
    expected = raw.pop(CHECKSUM, None)
    if expected is not None and expected != digest(json.dumps(raw, sort_keys=True)):
        raise Damaged(where, "checksum mismatch: altered since it was written")
    return raw


def decode(cls, data: bytes, where: str):
    """The record of type `cls` in `data`; Damaged naming `where` if its bytes are not those
    written, SchemaError if it is not such a record."""
    raw = checked_json(data, where)
    found = raw.pop("schema", None)
    if found != cls.SCHEMA:
        raise SchemaError(f"{where}: schema {found!r}, expected {cls.SCHEMA!r} ({OTHER_VERSION})")
    return validate(cls, raw, where)


def validate(cls, raw: dict, where: str):
    try:
        return _adapter(cls).validate_python(raw)
    except ValidationError as error:
        first = error.errors()[0]
        loc = ".".join(str(part) for part in first["loc"])
        raise SchemaError(f"{where}: not a valid {cls.__name__} ({loc}: {first['msg']})") from None


# Rows (Parquet) -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Member:
    """One individual of a population manifest (the population between two steps)."""

    SCHEMA: ClassVar[str] = "manifest/2"
    __pydantic_config__ = STRICT
    member: str
    checkpoint: BlobRef
    fitness: float
    role: str  # parent, offspring, reference or copy (PBT): what it was in the pool it survived
    born: int  # generation it was made in (0 for the initial population)
    parents: tuple[str, ...]
    elite: bool
    # what it last trained with (None before its first SGD step); a PBT copy: what it will train with
    hparams: HParams | None


@dataclass(frozen=True)
class HistoryRow:
    """One individual in one generation: history.parquet, one row each (docs: README, "history")."""

    SCHEMA: ClassVar[str] = "history/1"
    generation: int
    round: int  # evolution round an offspring (or a PBT copy: 0) was born in; -1 for parents
    member: str
    role: str  # parent, offspring, reference, finetune or copy (PBT: esgd.core.pbt)
    fitness: float  # after training (parents) or at birth (offspring)
    fitness_before: float | None  # parents: fitness when the generation began
    elite: bool
    selected: bool  # survives into the next generation
    hparams: HParams | None = field(metadata={"flatten": True})  # one column per field
    parents: tuple[str, ...]
    sigma: float | None  # mutation std an offspring was made with
    backoffs: int
    epochs: int
