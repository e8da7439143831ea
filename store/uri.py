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


def check_store_uri(uri: str, given: str = "store") -> None:
    """StoreError, without echoing the URI (it may hold a secret), if it names credentials
    (`user:secret@`, also a secret with a `/` in it, which hides the `@` from the host part) or a
    scheme other than a local path, file:// and s3://. `given`: how the message names it (--store)."""
    parts = urlparse(uri)
    if "@" in parts.netloc or (parts.scheme == "s3" and ":" in parts.netloc) or (parts.scheme and "@" in uri):
        raise StoreError(
            f"{given}: credentials in a store URI are not supported (they would be written into Workflows "
            "and logs): use AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE or the shared "
            "credentials file (on a cluster: the Secret named by the settings' s3Secret, or the pods' "
            "service account)"
        )
    if parts.scheme not in ("", "file", "s3"):
        raise StoreError(
            f"{given}: unsupported store URI scheme {parts.scheme + '://'!r}: use a local path, file:// or "
            "s3://bucket/prefix"
        )
    if parts.scheme == "s3" and not parts.netloc:
        raise StoreError(f"{given}: an S3 store needs a bucket: s3://bucket/prefix")


def open_store(uri: str | None = None) -> Store:
    """A store from a URI (default: store_uri's): a local path or file:// URI, or s3://bucket/prefix."""
    uri = store_uri(uri)
    check_store_uri(uri)
    scheme = urlparse(uri).scheme
    if scheme in ("", "file"):
        return LocalStore(unquote(urlparse(uri).path) if scheme == "file" else uri)
    from esgd.store.s3 import S3Store  # boto3 is imported only for S3 stores

    return S3Store.from_uri(uri)


def run_uri(store: Store, run_id: str) -> str:
    return f"{store.uri.rstrip('/')}/{keys.run(run_id)}"


def open_run(uri: str) -> tuple[Store, str]:
    """(store, run id) of a run URI."""
    marker = f"/{keys.RUNS}/"
    head, sep, run_id = uri.rstrip("/").rpartition(marker)
    if not sep or not run_id or "/" in run_id:
        raise StoreError(f"not a run URI: {redacted(uri)!r} (expected <store>/{keys.RUNS}/<run-id>)")
    return open_store(head), keys.check_run_id(run_id, f"run URI {redacted(uri)!r}: run id")


def read_uri(path: str) -> bytes:
    """Bytes of a local file path, a file:// URI or an s3://bucket/key URI."""
    if "://" not in path:
        with open(os.path.expanduser(path), "rb") as handle:
            return handle.read()
    head, _, name = path.rpartition("/")
    return open_store(head).get(name)
