"""The store interface every backend implements, and the commit helpers built on it.

Commit protocol (docs/storage.md): a step writes its large objects under keys unique to its
attempt, then publishes a small record with put_if_absent. Readers only follow records, so they
see committed objects only; a step whose record exists is done; of two racing attempts exactly
one record wins and the other attempt's objects are never referenced.
"""

import hashlib
import json
import uuid
from abc import ABC, abstractmethod


class StoreError(Exception):
    """The store cannot be used (not writable, unreachable, refused)."""


class NotFound(StoreError):
    """A key that is not in the store."""


class IntegrityError(StoreError):
    """An object whose bytes do not match the checksum recorded for it."""


def attempt_id() -> str:
    """A fresh id for one attempt of a step; never enters the history."""
    return uuid.uuid4().hex[:12]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Store(ABC):
    uri: str

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

    # Helpers shared by every backend.

    def get_json(self, key: str) -> dict:
        return json.loads(self.get(key))

    def commit_json(self, key: str, record: dict) -> dict:
        """Publish a record unless one is there; returns the record that is committed (ours or the winner's)."""
        data = json.dumps(record, sort_keys=True).encode()
        if self.put_if_absent(key, data):
            return record
        return self.get_json(key)

    def put_blob(self, key: str, data: bytes) -> dict:
        """Write a blob under an attempt-unique key; returns its reference for a record."""
        self.put(key, data)
        return {"checkpoint": key, "sha256": sha256(data), "size": len(data)}

    def get_verified(self, ref: dict) -> bytes:
        """Read a blob through its reference, checking size and checksum."""
        key = ref["checkpoint"]
        data = self.get(key)
        if len(data) != ref["size"] or sha256(data) != ref["sha256"]:
            raise IntegrityError(f"checksum mismatch for {key}: the object is truncated or altered")
        return data
