"""The embedded default: a store in a local directory."""

import hashlib
import os
import tempfile
from pathlib import Path

from esgd.core.records import BlobRef
from esgd.store.base import NotFound, Store, StoreError


class LocalStore(Store):
    local = True

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser().absolute()
        self.uri = self.root.as_uri()

    def _path(self, key: str) -> Path:
        if key.startswith("/") or ".." in key.split("/"):
            raise StoreError(f"invalid key {key!r}")
        return self.root / key

    @staticmethod
    def _mkstemp(path: Path) -> tuple[int, str]:
        """A new temporary file next to `path`; its folder is made only when missing (mkdir on
        every write costs as much as the write of a small record)."""
        try:
            return tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        except FileNotFoundError:
            path.parent.mkdir(parents=True, exist_ok=True)
            return tempfile.mkstemp(dir=path.parent, prefix=".tmp-")

    def _temp(self, path: Path, data: bytes) -> str:
        fd, tmp = self._mkstemp(path)
        # Written whole, then renamed or linked into place: atomic for readers and against a killed
        # process. No fsync (it costs more than a small model's training): after an OS crash the
        # newest objects may be torn, and the checksums in the records make the reading step fail
        # naming the key instead of training on it.
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        return tmp

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        os.replace(self._temp(path, data), path)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        path = self._path(key)
        tmp = self._temp(path, data)
        try:
            os.link(tmp, path)  # atomic and exclusive: fails if the key exists
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise NotFound(f"{self.uri}/{key} not found") from None

    def open_read(self, key: str):
        try:
            return self._path(key).open("rb")
        except FileNotFoundError:
            raise NotFound(f"{self.uri}/{key} not found") from None

    def write_stream(self, key: str, pieces) -> BlobRef:
        path = self._path(key)
        fd, tmp = self._mkstemp(path)
        digest, size = hashlib.sha256(), 0
        try:
            with os.fdopen(fd, "wb") as handle:
                for piece in pieces:
                    handle.write(piece)
                    digest.update(piece)
                    size += len(piece)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
        return BlobRef(key, digest.hexdigest(), size)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str) -> list[str]:
        base = self._path(prefix)
        if not base.is_dir():
            return []
        return sorted(
            p.relative_to(self.root).as_posix()
            for p in base.rglob("*")
            if p.is_file() and not p.name.startswith(".tmp-")
        )

    def check_writable(self) -> None:
        probe = self.root
        while not probe.exists():
            probe = probe.parent
        if not probe.is_dir():
            raise StoreError(f"store {self.uri} cannot be written: {probe} is not a directory")
        if not os.access(probe, os.W_OK | os.X_OK):
            raise StoreError(f"store {self.uri} cannot be written: no write permission on {probe}")
