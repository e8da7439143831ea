"""A run as the store holds it: its store, its id and its frozen spec. Everything above the worker
(the driver, the engines, reports) sees a run this way, without torch."""

import hashlib
import json
from dataclasses import dataclass

from esgd.core import keys
from esgd.core.records import CHECKSUM as CHECKSUM_FIELD
from esgd.core.records import Damaged
from esgd.core.spec import RunSpec, SpecError, load_frozen
from esgd.store.base import NotFound, Store, damaged
from esgd.store.uri import open_run, run_uri

CHECKSUM = "# sha256 "
"""The frozen spec's checksum line, the last of its header: the SHA-256 of the text after it (the
resolved spec). Runs created before checksums existed have none."""


@dataclass(frozen=True)
class RunRef:
    store: Store
    id: str
    spec: RunSpec

    @property
    def uri(self) -> str:
        return run_uri(self.store, self.id)

    @classmethod
    def open(cls, uri: str) -> "RunRef":
        """The run at a run URI (<store>/runs/<run-id>), with the spec frozen when it was created."""
        store, run_id = open_run(uri)
        return cls(store, run_id, frozen_spec(store, run_id))


def with_checksum(header: list[str], text: str) -> str:
    """A spec.yaml's content: the header's comment lines, the checksum line of `text`, then `text`
    (the resolved spec, esgd.core.spec.dump_spec)."""
    return "".join(f"{line}\n" for line in header) + f"{CHECKSUM}{hashlib.sha256(text.encode()).hexdigest()}\n{text}"


def frozen_spec(store: Store, run_id: str) -> RunSpec:
    """The spec a run was created with (NotFound if there is no such run), its checksum checked:
    IntegrityError naming the stored spec when it is damaged, never taken for the user's file."""
    key = keys.spec(run_id)
    data = store.get(key)
    try:
        text = data.decode()
    except UnicodeDecodeError:
        raise damaged(store, Damaged(key, "not UTF-8 text: torn or altered")) from None
    lines = text.splitlines(keepends=True)
    header = next((i for i, line in enumerate(lines) if not line.startswith("#")), len(lines))
    marks = [i for i in range(header) if lines[i].startswith(CHECKSUM)]
    if marks:
        line, rest = lines[marks[-1]], "".join(lines[marks[-1] + 1 :])
        if hashlib.sha256(rest.encode()).hexdigest() != line.removeprefix(CHECKSUM).strip():
            raise damaged(store, Damaged(key, "checksum mismatch: altered since the run was created"))
        try:
            return load_frozen(rest, where=key)
        except SpecError as error:  # intact, so written by a version whose specs this one cannot read
            raise SpecError(f"the run's frozen spec {key} does not load with this version of esgd: {error}") from None
    if not "".join(lines[header:]).strip():  # a spec is never written empty: torn
        raise damaged(store, Damaged(key, "empty: torn (nothing but its header is left)"))
    if _checksummed(store, run_id):  # the run's records have checksums: so had its spec
        raise damaged(store, Damaged(key, "its checksum line is missing: torn or altered"))
    try:
        return load_frozen(text, where=key)
    except SpecError as error:  # no checksum (an older run): damaged, or of another version
        raise damaged(store, Damaged(key, f"it does not load as a spec: {error}")) from None


def _checksummed(store: Store, run_id: str) -> bool:
    """Whether the run was made by a version that checksums what it stores: its first initial
    individual's record carries a checksum (a run not yet initialised cannot tell: False)."""
    try:
        record = json.loads(store.get(keys.init_record(run_id, keys.initial_id(0))))
    except (NotFound, ValueError):
        return False
    return isinstance(record, dict) and CHECKSUM_FIELD in record
