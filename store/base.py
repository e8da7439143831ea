"""The store interface every backend implements, and the commit helpers built on it.

Commit protocol (docs/storage.md): a step writes its large objects under keys unique to its
attempt, then publishes a small record with put_if_absent. Readers only follow records, so they
see committed objects only; a step whose record exists is done; of two racing attempts exactly
one record wins and the other attempt's objects are never referenced.
"""

import hashlib
import io
import json
import uuid
from urllib.parse import urlparse
from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import BinaryIO, Iterable, TypeVar

T, R = TypeVar("T"), TypeVar("R")


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


def redacted(url: str) -> str:
    """The URL without any user:password@ part, for messages."""
    parts = urlparse(url)
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl() if "@" in parts.netloc else url


class Store(ABC):
    uri: str
    objects_at_once: int = 1
    """Independent objects `each` moves at once: one for a local directory, where threads cost
    more than they overlap; a few for a remote store, to hide its round trips."""

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

    def each(self, fn: Callable[[T], R], items: Iterable[T]) -> "list[R]":  # quoted: `list` here is Store.list
        """[fn(item) for item in items] for an fn that reads or writes its own objects (a step does
        that once per individual), up to objects_at_once at a time. The first error in the items'
        order is raised once the items before it are done; items not started by then are skipped.
        Every object is still written and committed on its own, so a step that dies midway leaves
        what one at a time leaves: some records committed, the rest redone by the next attempt,
        with the same values."""
        items = list(items)
        if len(items) < 2 or self.objects_at_once < 2:
            return [fn(item) for item in items]
        with ThreadPoolExecutor(min(self.objects_at_once, len(items))) as pool:
            return list(pool.map(fn, items))

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

    def open_read(self, key: str) -> BinaryIO:
        """A readable binary stream of the object (NotFound if absent). Backends stream it; this
        default reads the whole object."""
        return io.BytesIO(self.get(key))

    def put_stream(self, key: str, pieces: Iterable[bytes]) -> dict:
        """put_blob for an object given as byte pieces, in order. Backends stream it (memory: a few
        pieces or transfer parts); this default joins the pieces."""
        return self.put_blob(key, b"".join(pieces))

    def open_verified(self, ref: dict) -> "VerifiedReader":
        """A stream of a blob through its reference; size and checksum are checked as it is read."""
        return VerifiedReader(self.open_read(ref["checkpoint"]), ref)

    def get_verified(self, ref: dict) -> bytes:
        """Read a blob through its reference, checking size and checksum."""
        key = ref["checkpoint"]
        data = self.get(key)
        if len(data) != ref["size"] or sha256(data) != ref["sha256"]:
            raise IntegrityError(f"checksum mismatch for {key}: the object is truncated or altered")
        return data


class VerifiedReader:
    """A forward-only reader of a blob that counts and hashes what passes through. read(n) returns
    n bytes unless the blob ends; a blob that ends early or runs past its recorded size raises
    IntegrityError at once, and finish() (read to the end, compare the checksum) must be called
    before anything made from the bytes is committed."""

    def __init__(self, raw: BinaryIO, ref: dict):
        self._raw, self.key, self._size, self._sha = raw, ref["checkpoint"], ref["size"], ref["sha256"]
        self._hash, self._pos = hashlib.sha256(), 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def tell(self) -> int:
        return self._pos

    @property
    def closed(self) -> bool:
        return self._raw.closed

    def read(self, n: int = -1) -> bytes:
        want = self._size - self._pos if n is None or n < 0 else n
        parts, have = [], 0
        while have < want:
            piece = self._raw.read(min(want - have, 1 << 24))
            if not piece:
                break
            parts.append(piece)
            have += len(piece)
        data = b"".join(parts)
        self._pos += len(data)
        self._hash.update(data)
        if self._pos > self._size:
            raise IntegrityError(f"checksum mismatch for {self.key}: the object is longer than its recorded size")
        if len(data) < want and self._pos < self._size:
            raise IntegrityError(f"checksum mismatch for {self.key}: the object is truncated ({self._pos} of {self._size} B)")
        return data

    def finish(self) -> None:
        """Read what is left and check size and checksum; IntegrityError names the key."""
        self.read(self._size - self._pos)
        if self._raw.read(1) or self._hash.hexdigest() != self._sha:
            raise IntegrityError(f"checksum mismatch for {self.key}: the object is truncated or altered")

    def close(self) -> None:
        self._raw.close()

    def __enter__(self) -> "VerifiedReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
