"""The embedded default: a store in a local directory.

Every write is whole, then renamed or linked into place: atomic for readers and against a killed
process. With fsync (the default; ESGD_FSYNC=0 turns it off) the file is flushed to the disk before
it is renamed or linked, and its folder after, so that a commit survives an OS crash or a power
cut: a record is never on the disk before the checkpoint it names. Without it the newest objects
may be torn after an OS crash; the checksums then make the reading step fail naming the key, and
`esgd verify` says how to recover (docs/storage.md, "Integrity")."""

import errno
import hashlib
import os
import tempfile
from pathlib import Path

from esgd.core.records import BlobRef
from esgd.store.base import NotFound, Store, StoreError

FSYNC = "ESGD_FSYNC"
"""Environment variable: 1 (the default) flushes every write of a local store to the disk before it
counts as done; 0 does not (faster; a commit may be lost or torn by an OS crash, not by a killed
process): docs/storage.md, docs/PERFORMANCE.md ("fsync")."""


def fsync_setting() -> bool:
    """$ESGD_FSYNC as a bool (default True); StoreError (exit 2) for a value that is not one."""
    raw = os.environ.get(FSYNC, "1").strip().lower()
    if raw in ("1", "true", "yes", "on", ""):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise StoreError(f"{FSYNC}={raw!r}: expected 1 (flush every commit to the disk, the default) or 0 (do not)")


def _fsync_dir(path: Path) -> None:
    """Flush a folder's entries (a rename or link into it, a folder made in it) to the disk."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError as error:  # a file system that cannot sync folders (some network ones): its files are synced
        if error.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


class LocalStore(Store):
    local = True

    def __init__(self, root: str | os.PathLike, fsync: bool | None = None):
        """`fsync`: flush every write to the disk (default: $ESGD_FSYNC, else on)."""
        self.fsync = fsync_setting() if fsync is None else fsync
        root = Path(root).expanduser().absolute()
        # `..` resolved (through any symlink before it, as the OS would), so printed URIs are plain:
        # file:///work/runs, not file:///work/main/../runs; other paths are kept as given.
        self.root = root.resolve() if ".." in root.parts else root
        self.uri = self.root.as_uri()

    def _path(self, key: str) -> Path:
        if key.startswith("/") or ".." in key.split("/"):
            raise StoreError(f"invalid key {key!r}")
        return self.root / key

    def _mkstemp(self, path: Path) -> tuple[int, str]:
        """A new temporary file next to `path`; its folder is made only when missing (mkdir on
        every write costs as much as the write of a small record)."""
        try:
            return tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        except FileNotFoundError:
            self._mkdir(path.parent)
            return tempfile.mkstemp(dir=path.parent, prefix=".tmp-")

    def _mkdir(self, folder: Path) -> None:
        """Make `folder` and its missing parents; with fsync, each new folder's entry is flushed."""
        missing, probe = [], folder
        while not probe.exists():
            missing.append(probe)
            probe = probe.parent
        folder.mkdir(parents=True, exist_ok=True)
        if self.fsync:
            for made in reversed(missing):
                _fsync_dir(made.parent)

    def _temp(self, path: Path, data: bytes) -> str:
        """A temporary file next to `path` holding `data`, on the disk when fsync is on; renamed or
        linked into place by the caller (then _synced)."""
        fd, tmp = self._mkstemp(path)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            if self.fsync:
                handle.flush()
                os.fsync(handle.fileno())
        return tmp

    def _synced(self, path: Path) -> None:
        """After a rename or link into path's folder: with fsync, flush the folder's entries."""
        if self.fsync:
            _fsync_dir(path.parent)

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        os.replace(self._temp(path, data), path)
        self._synced(path)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        path = self._path(key)
        tmp = self._temp(path, data)
        try:
            os.link(tmp, path)  # atomic and exclusive: fails if the key exists
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)
        self._synced(path)
        return True

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
                if self.fsync:
                    handle.flush()
                    os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
        self._synced(path)
        return BlobRef(key, digest.hexdigest(), size)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

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
