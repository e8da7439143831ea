"""Store and run URIs: a run's URI is its store's URI plus `/runs/<run-id>`."""

import os
from urllib.parse import unquote, urlparse

from esgd.core import keys
from esgd.store.base import Store, StoreError, redacted
from esgd.store.local import LocalStore

DEFAULT_STORE = "esgd-runs"


def store_uri(uri: str | None, local_default: bool = True) -> str | None:
    """The store a command uses: `uri`, else $ESGD_STORE, else ./esgd-runs (with `local_default`;
    without it None, for commands whose store pods must reach)."""
    return uri or os.environ.get("ESGD_STORE") or (DEFAULT_STORE if local_default else None)


def open_store(uri: str | None = None) -> Store:
    """A store from a URI (default: store_uri's): a local path or file:// URI, or s3://bucket/prefix."""
    uri = store_uri(uri)
    scheme = urlparse(uri).scheme
    if scheme in ("", "file"):
        return LocalStore(unquote(urlparse(uri).path) if scheme == "file" else uri)
    if scheme == "s3":
        from esgd.store.s3 import S3Store  # boto3 is imported only for S3 stores

        return S3Store.from_uri(uri)
    raise StoreError(f"unsupported store URI {uri!r}: use a local path, file:// or s3://")


def run_uri(store: Store, run_id: str) -> str:
    return f"{store.uri.rstrip('/')}/{keys.run(run_id)}"


def open_run(uri: str) -> tuple[Store, str]:
    """(store, run id) of a run URI."""
    marker = f"/{keys.RUNS}/"
    head, sep, run_id = uri.rstrip("/").rpartition(marker)
    if not sep or not run_id or "/" in run_id:
        raise StoreError(f"not a run URI: {redacted(uri)!r} (expected <store>/{keys.RUNS}/<run-id>)")
    return open_store(head), run_id


def read_uri(path: str) -> bytes:
    """Bytes of a local file path, a file:// URI or an s3://bucket/key URI."""
    if "://" not in path:
        with open(os.path.expanduser(path), "rb") as handle:
            return handle.read()
    head, _, name = path.rpartition("/")
    return open_store(head).get(name)
