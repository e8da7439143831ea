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
from threading import Lock
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
    computing_at_once: int = 1
    """Items `each(..., computing=True)` runs at once, each mostly computation on its own objects
    (an offspring: noise, mean, checksum, which numpy and hashlib run outside Python's lock): the
    machine's cores (at most 4) for a local directory; objects_at_once for a remote store, whose
    setting also bounds the evolve step's memory."""

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

    def each(self, fn: Callable[[T], R], items: Iterable[T], computing: bool = False) -> "list[R]":  # `list`: Store.list
        """[fn(item) for item in items] for an fn that reads or writes its own objects (a step does
        that once per individual), up to objects_at_once (computing_at_once, for an fn that is
        mostly computation) at a time. The first error in the items' order is raised once the items
        before it are done; items not started by then are skipped. Every object is still written and
        committed on its own, so a step that dies midway leaves what one at a time leaves: some
        records committed, the rest redone by the next attempt, with the same values."""
        items, at_once = list(items), self.computing_at_once if computing else self.objects_at_once
        if len(items) < 2 or at_once < 2:
            return [fn(item) for item in items]
        with ThreadPoolExecutor(min(at_once, len(items))) as pool:
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
        ref = {"checkpoint": key, "sha256": sha256(data), "size": len(data)}
        self.written.remember(ref, data)
        return ref

    def open_read(self, key: str) -> BinaryIO:
        """A readable binary stream of the object (NotFound if absent). Backends stream it; this
        default reads the whole object."""
        return io.BytesIO(self.get(key))

    def put_stream(self, key: str, pieces: Iterable[bytes]) -> dict:
        """put_blob for an object given as byte pieces, in order. Memory: what the backend's
        _write_stream holds (a few pieces or transfer parts), plus the object itself if it is
        small enough for `written` to keep."""
        kept: list[bytes] = []

        def keeping() -> Iterable[bytes]:
            size = 0
            for piece in pieces:
                size += len(piece)
                if size <= self.written.largest:
                    kept.append(piece)
                elif kept:
                    kept.clear()  # too large to keep: the size only grows from here
                yield piece

        ref = self._write_stream(key, keeping())
        if ref["size"] <= self.written.largest:
            self.written.remember(ref, b"".join(kept))
        return ref

    def _write_stream(self, key: str, pieces: Iterable[bytes]) -> dict:
        """Write the pieces as one object and return its reference. Backends stream it; this
        default joins the pieces."""
        data = b"".join(pieces)
        self.put(key, data)
        return {"checkpoint": key, "sha256": sha256(data), "size": len(data)}

    written: "Written"  # set below the class: by default nothing is kept

    def keep_written(self, budget: int) -> None:
        """From now on keep the blobs this store object writes, up to `budget` bytes, so that
        reading them back costs neither a read nor a checksum (see Written)."""
        self.written = Written(budget)

    def open_verified(self, ref: dict) -> "VerifiedReader":
        """A stream of a blob through its reference; size and checksum are checked as it is read."""
        data = self.written.recall(ref)
        if data is not None:
            return VerifiedReader(io.BytesIO(data), ref, verified=True)
        return VerifiedReader(self.open_read(ref["checkpoint"]), ref)

    def get_verified(self, ref: dict) -> bytes:
        """Read a blob through its reference, checking size and checksum."""
        key = ref["checkpoint"]
        data = self.written.recall(ref)
        if data is not None:
            return data
        data = self.get(key)
        if len(data) != ref["size"] or sha256(data) != ref["sha256"]:
            raise IntegrityError(f"checksum mismatch for {key}: the object is truncated or altered")
        return data


class Written:
    """Blobs one process wrote, kept in memory with their checksums. The local executor runs every
    step of a generation in one process, and each step reads the checkpoints the step before wrote
    (evolve the trained parents, twice each on average; evaluate the offspring; train the
    survivors): with these kept, reading back costs no read and no checksum. A blob is handed back
    only for a reference with the very checksum and size computed when it was written, so what a
    step receives is what it would read from an intact store; damage done to the stored object
    afterwards is not seen by this process, and is by any other reader.
    At most `budget` bytes, the oldest dropped first; a blob larger than budget // 8 is not kept.
    A budget of 0 keeps nothing: a pod never reads what it wrote itself."""

    def __init__(self, budget: int):
        self.budget, self.largest = budget, budget // 8
        self._blobs: dict[str, tuple[str, bytes]] = {}  # key -> (sha256, bytes), oldest first
        self._size, self._lock = 0, Lock()

    def remember(self, ref: dict, data: bytes) -> None:
        if not self.budget:
            return
        with self._lock:
            old = self._blobs.pop(ref["checkpoint"], None)  # a key written again: only the newest counts
            self._size -= len(old[1]) if old else 0
            if len(data) > self.largest:
                return
            self._blobs[ref["checkpoint"]] = (ref["sha256"], data)
            self._size += len(data)
            while self._size > self.budget:
                _, dropped = self._blobs.pop(next(iter(self._blobs)))  # the oldest
                self._size -= len(dropped)

    def recall(self, ref: dict) -> bytes | None:
        """The blob's bytes if this process wrote exactly the referenced blob, else None."""
        with self._lock:
            sha, data = self._blobs.get(ref["checkpoint"], (None, b""))
        return data if sha == ref["sha256"] and len(data) == ref["size"] else None


Store.written = Written(0)


class VerifiedReader:
    """A forward-only reader of a blob that counts and hashes what passes through. read(n) returns
    n bytes unless the blob ends; a blob that ends early or runs past its recorded size raises
    IntegrityError at once, and finish() (read to the end, compare the checksum) must be called
    before anything made from the bytes is committed."""

    def __init__(self, raw: BinaryIO, ref: dict, verified: bool = False):
        """`verified`: `raw` holds bytes already known to match the reference (Written): the
        size is still counted, the checksum is not computed again."""
        self._raw, self.key, self._size, self._sha = raw, ref["checkpoint"], ref["size"], ref["sha256"]
        self._hash, self._pos, self._verified = hashlib.sha256(), 0, verified

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
        if not self._verified:
            self._hash.update(data)
        if self._pos > self._size:
            raise IntegrityError(f"checksum mismatch for {self.key}: the object is longer than its recorded size")
        if len(data) < want and self._pos < self._size:
            raise IntegrityError(f"checksum mismatch for {self.key}: the object is truncated ({self._pos} of {self._size} B)")
        return data

    def finish(self) -> None:
        """Read what is left and check size and checksum; IntegrityError names the key."""
        self.read(self._size - self._pos)
        if self._raw.read(1) or (not self._verified and self._hash.hexdigest() != self._sha):
            raise IntegrityError(f"checksum mismatch for {self.key}: the object is truncated or altered")

    def close(self) -> None:
        self._raw.close()

    def __enter__(self) -> "VerifiedReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
