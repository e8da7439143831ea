"""Checksummed objects (checkpoints, dataset shards): written under attempt-unique keys, read
back only through their reference (BlobRef), with size and SHA-256 checked on every read.

Blobs also keeps what this process wrote, when whoever runs the steps asks for it (Kept): the
local engine runs every step of a run in one process, and each step reads what the step before
wrote.
"""

import hashlib
import io
from collections.abc import Iterable
from threading import Lock
from typing import BinaryIO

from esgd.core.records import BlobRef
from esgd.store.base import IntegrityError, Store, recovery, sha256


class Blobs:
    """Checksummed objects of one store, optionally keeping up to `keep` bytes of what this
    process wrote (0: nothing, as in a pod, which never reads what it wrote itself)."""

    def __init__(self, store: Store, keep: int = 0):
        self.store, self.kept = store, Kept(keep)

    def put(self, key: str, data: bytes) -> BlobRef:
        """Write a blob under an attempt-unique key; returns its reference for a record."""
        self.store.put(key, data)
        ref = BlobRef(key, sha256(data), len(data))
        self.kept.remember(ref, data)
        return ref

    def put_stream(self, key: str, pieces: Iterable[bytes]) -> BlobRef:
        """put() for a blob given as byte pieces, in order. Memory: what the store's write_stream
        holds (a few pieces or transfer parts), plus the blob itself if it is small enough to keep."""
        kept: list[bytes] = []

        def keeping() -> Iterable[bytes]:
            size = 0
            for piece in pieces:
                size += len(piece)
                if size <= self.kept.largest:
                    kept.append(piece)
                elif kept:
                    kept.clear()  # too large to keep: the size only grows from here
                yield piece

        ref = self.store.write_stream(key, keeping())
        if ref.size <= self.kept.largest:
            self.kept.remember(ref, b"".join(kept))
        return ref

    def open(self, ref: BlobRef) -> "VerifiedReader":
        """A stream of a blob; size and checksum are checked as it is read."""
        data = self.kept.recall(ref)
        if data is not None:
            return VerifiedReader(io.BytesIO(data), ref, verified=True)
        return VerifiedReader(self.store.open_read(ref.key), ref, advice=recovery(self.store, ref.key))

    def get(self, ref: BlobRef) -> bytes:
        """A blob's bytes, size and checksum checked."""
        data = self.kept.recall(ref)
        if data is not None:
            return data
        data = self.store.get(ref.key)
        if len(data) != ref.size or sha256(data) != ref.sha256:
            raise IntegrityError(
                f"checksum mismatch for {ref.key}: the object is truncated or altered; {recovery(self.store, ref.key)}"
            )
        return data


class Kept:
    """Blobs one process wrote, kept in memory with their checksums. With the µ + λ checkpoints of
    a generation kept, the steps of a one-process run read back what the step before wrote without
    a read and a checksum (evolve the trained parents, twice each on average; evaluate the
    offspring; train the survivors). A blob is handed back only for a reference with the very
    checksum and size computed when it was written, so what a step receives is what it would read
    from an intact store; damage done to the stored object afterwards is not seen by this
    process, and is by any other reader.
    At most `budget` bytes, the oldest dropped first; a blob larger than budget // 8 is not kept."""

    def __init__(self, budget: int):
        self.budget, self.largest = budget, budget // 8
        self._blobs: dict[str, tuple[str, bytes]] = {}  # key -> (sha256, bytes), oldest first
        self._size, self._lock = 0, Lock()

    def remember(self, ref: BlobRef, data: bytes) -> None:
        if not self.budget:
            return
        with self._lock:
            old = self._blobs.pop(ref.key, None)  # a key written again: only the newest counts
            self._size -= len(old[1]) if old else 0
            if len(data) > self.largest:
                return
            self._blobs[ref.key] = (ref.sha256, data)
            self._size += len(data)
            while self._size > self.budget:
                _, dropped = self._blobs.pop(next(iter(self._blobs)))  # the oldest
                self._size -= len(dropped)

    def recall(self, ref: BlobRef) -> bytes | None:
        """The blob's bytes if this process wrote exactly the referenced blob, else None."""
        with self._lock:
            sha, data = self._blobs.get(ref.key, (None, b""))
        return data if sha == ref.sha256 and len(data) == ref.size else None


class VerifiedReader:
    """A forward-only reader of a blob that counts and hashes what passes through. read(n) returns
    n bytes unless the blob ends; a blob that ends early or runs past its recorded size raises
    IntegrityError at once, and finish() (read to the end, compare the checksum) must be called
    before anything made from the bytes is committed."""

    def __init__(self, raw: BinaryIO, ref: BlobRef, verified: bool = False, advice: str = ""):
        """`verified`: `raw` holds bytes already known to match the reference (Kept): the
        size is still counted, the checksum is not computed again. `advice`: how to recover,
        added to the errors."""
        self._raw, self.key, self._size, self._sha = raw, ref.key, ref.size, ref.sha256
        self._advice = f"; {advice}" if advice else ""
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
            raise IntegrityError(
                f"checksum mismatch for {self.key}: the object is longer than its recorded size{self._advice}"
            )
        if len(data) < want and self._pos < self._size:
            raise IntegrityError(
                f"checksum mismatch for {self.key}: the object is truncated ({self._pos} of {self._size} B)"
                + self._advice
            )
        return data

    def finish(self) -> None:
        """Read what is left and check size and checksum; IntegrityError names the key."""
        self.read(self._size - self._pos)
        if self._raw.read(1) or (not self._verified and self._hash.hexdigest() != self._sha):
            raise IntegrityError(f"checksum mismatch for {self.key}: the object is truncated or altered{self._advice}")

    def close(self) -> None:
        self._raw.close()

    def __enter__(self) -> "VerifiedReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
