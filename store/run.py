"""A run as the store holds it: its store, its id and its frozen spec. Everything above the worker
(the driver, the engines, reports) sees a run this way, without torch."""

from dataclasses import dataclass

from esgd.core import keys
from esgd.core.spec import RunSpec, load_spec
from esgd.store.base import Store
from esgd.store.uri import open_run, run_uri


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


def frozen_spec(store: Store, run_id: str) -> RunSpec:
    """The spec a run was created with (NotFound if there is no such run)."""
    return load_spec(store.get(keys.spec(run_id)).decode())
