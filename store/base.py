"""The store interface every backend implements, and the commit helpers built on it.

Commit protocol (docs/storage.md): a step writes its large objects under keys unique to its
attempt, then publishes a small record with put_if_absent. Readers only follow records, so they
see committed objects only; a step whose record exists is done; of two racing attempts exactly
one record wins and the other attempt's objects are never referenced.
"""

import hashlib
import io
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import BinaryIO, TypeVar
from urllib.parse import urlparse

from esgd.core import keys, records
from esgd.core.errors import TransientError
from esgd.core.records import BlobRef, Damaged

R = TypeVar("R")


class StoreError(Exception):
    """The store cannot be used (not writable, unreachable, refused)."""


class StoreUnavailable(StoreError, TransientError):
    """The store cannot be reached now (connection refused or lost, timeouts, 5xx, throttling)."""


class NotFound(StoreError):
    """A key that is not in the store."""


class IntegrityError(StoreError):
    """A stored object whose bytes are not those written: its checksum does not match, or it does
    not parse (torn or altered). The message names the object and how to recover."""


def damaged(store: "Store", error: Damaged) -> IntegrityError:
    """The store's error for a damaged object found by the core's checks: its URI, what is wrong,
    and how to recover (esgd.core.keys.recovery)."""
    return IntegrityError(
        f"{store.uri.rstrip('/')}/{error.key} is damaged ({error.reason}); {recovery(store, error.key)}"
    )


def recovery(store: "Store", key: str) -> str:
    return keys.recovery(key, redacted(store.uri))


def attempt_id() -> str:
    """A fresh id for one attempt of a step; never enters the history."""
    return uuid.uuid4().hex[:12]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def redacted(url: str) -> str:
    """The URL without any user:password@ part, for messages."""
    parts = urlparse(url)
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl() if "@" in parts.netloc else url


class Store(ABC):
    """A place for a run's objects: a local directory or an S3 bucket. Only I/O lives here; how
    many objects a step moves at once and what a process keeps of what it wrote is the policy of
    whoever runs the step (esgd.worker.transfers, esgd.store.blobs)."""

    uri: str
    local: bool = False
    """True for a store on this machine's disk (objects cost no round trip)."""
    objects_at_once: int = 1
    """Independent requests worth having in flight at once: one for a local directory, where
    threads cost more than they overlap; a few for a remote store, to hide its round trips."""

    @abstractmethod
    def put(self, key: str, data: bytes) -> None:
        """Write (or overwrite) an object atomically: readers see the old or the new bytes."""

    @abstractmethod
    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Create an object only if no object has that key; True if this call created it."""

    @abstractmethod
    def get(self, key: str) -> bytes:
        """The object's bytes; NotFound if absent."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def list(self, prefix: str) -> list[str]:
        """Keys under `prefix/`, sorted."""

    @abstractmethod
    def check_writable(self) -> None:
        """Raise StoreError with a clear message if this store cannot be written; writes nothing."""

    def delete(self, key: str) -> None:
        """Remove an object; nothing happens if it is absent. A run's steps never remove anything:
        only extending a run (esgd.controller.runs) removes what was made after its last committed
        generation (its final stages). A backend without it cannot extend a finished run."""
        raise StoreError(f"store {self.uri} cannot remove objects")

    def open_read(self, key: str) -> BinaryIO:
        """A readable binary stream of the object (NotFound if absent). Backends stream it; this
        default reads the whole object."""
        return io.BytesIO(self.get(key))

    def write_stream(self, key: str, pieces: Iterable[bytes]) -> BlobRef:
        """Write byte pieces, in order, as one object; returns its reference (size, SHA-256).
        Backends stream it; this default joins the pieces."""
        data = b"".join(pieces)
        self.put(key, data)
        return BlobRef(key, sha256(data), len(data))

    # Typed records (esgd.core.records) on top of the interface.

    def commit(self, key: str, record: R) -> R:
        """Publish a record unless one is there; returns the record that is committed (ours or the winner's)."""
        if self.put_if_absent(key, records.encode(record)):
            return record
        return self.read(key, type(record))

    def read(self, key: str, cls: type[R]) -> R:
        """The record of type `cls` at `key`, its checksum checked; NotFound if absent, IntegrityError
        if its bytes are not those written, SchemaError if it is not such a record."""
        data = self.get(key)
        try:
            return records.decode(cls, data, key)
        except Damaged as error:
            raise damaged(self, error) from None
