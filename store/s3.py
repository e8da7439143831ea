"""S3-compatible object storage (AWS S3, MinIO, SeaweedFS, Ceph RGW, ...) through boto3.

Configuration comes from the standard places (docs/storage.md): credentials, region and endpoint
from boto3's chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN, AWS_PROFILE and
the shared config and credentials files, AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, AWS_REGION), the
rest from S3Settings (ESGD_S3_* variables). Credentials are never put in a message, a log line or a
repr: errors name the store URI, the endpoint, the key and the server's error code only.

Commits: put_if_absent is a conditional PUT (If-None-Match: *): 412 means another writer created
the key first. Every call is retried a bounded number of times on transient failures (connection
lost, 5xx, 409 ConditionalRequestConflict) on top of botocore's own standard retries; when they run
out the error says so in one line. Large objects travel as parallel multipart uploads and ranged
downloads, each part retried on its own; a streamed upload (put_stream) holds a bounded number of
parts in memory, and a streamed download (open_read) resumes where a broken connection left off.
"""

import hashlib
import io
import itertools
import logging
import os
import random
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, fields
from typing import BinaryIO, TypeVar
from urllib.parse import urlparse

import boto3
import botocore.exceptions as bex
from botocore.config import Config

from esgd.core.records import BlobRef
from esgd.store.base import NotFound, Store, StoreError, StoreUnavailable, redacted
from esgd.store.uri import check_store_uri

log = logging.getLogger(__name__)
T = TypeVar("T")
MiB = 1 << 20


@dataclass(frozen=True)
class S3Settings:
    """Tuning of the S3 store; each field can be set by the environment variable in its docstring."""

    addressing_style: str | None = None
    """ESGD_S3_ADDRESSING_STYLE: `path` (https://host/bucket/key), `virtual` (https://bucket.host/key)
    or `auto`. Unset: the shared config file's s3.addressing_style, else `path` for a custom endpoint
    (MinIO, SeaweedFS, Ceph) and botocore's choice on AWS."""
    connect_timeout: float = 5.0
    """ESGD_S3_CONNECT_TIMEOUT: seconds to open a connection to the endpoint."""
    read_timeout: float = 60.0
    """ESGD_S3_READ_TIMEOUT: seconds to wait for a response, or for the next bytes of one."""
    retries: int = 5
    """ESGD_S3_RETRIES: attempts the store makes at each operation on transient failures (backoff
    0.5, 1, 2, 4 s with jitter: 5 to 20 s in all) before it gives up with an error; each attempt is
    itself retried by botocore's standard mode (AWS_MAX_ATTEMPTS, default 3)."""
    part_size_mb: int = 8
    """ESGD_S3_PART_SIZE_MB: part size of multipart uploads and ranged downloads (at least 5); objects
    up to this size travel in one request."""
    concurrency: int = 10
    """ESGD_S3_CONCURRENCY: parallel connections of one large transfer. A streamed upload holds up
    to (concurrency + 2) parts in memory."""
    objects: int = 4
    """ESGD_S3_OBJECTS: independent objects (checkpoints, records) a step moves at once. Each costs
    at least one round trip, and a few at once hide that latency; memory grows with it for models
    larger than a part (up to objects x (concurrency + 2) parts in flight)."""

    @classmethod
    def from_env(cls) -> "S3Settings":
        values = {}
        for f in fields(cls):
            name = f"ESGD_S3_{f.name.upper()}"
            raw = os.environ.get(name, "").strip()
            if not raw:
                continue
            if f.name == "addressing_style":
                if raw not in ("path", "virtual", "auto"):
                    raise StoreError(f"{name}={raw!r}: expected path, virtual or auto")
                values[f.name] = raw
                continue
            kind = float if f.name.endswith("timeout") else int
            try:
                values[f.name] = kind(raw)
            except ValueError:
                raise StoreError(f"{name}={raw!r}: expected a number") from None
            if values[f.name] <= 0 or (f.name == "part_size_mb" and values[f.name] < 5):
                raise StoreError(f"{name}={raw!r}: out of range")
        return cls(**values)

    @property
    def part_size(self) -> int:
        return self.part_size_mb * MiB


# Error codes, as S3 servers send them (HEAD responses carry only the status, hence "403"/"404").
_AUTH = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
    "TokenRefreshRequired",
    "AuthorizationHeaderMalformed",
    "InvalidSecurity",
    "InvalidClientTokenId",
    "403",
    "AccessDenied",
    "AllAccessDisabled",
    "AccountProblem",
    "Forbidden",
}
_MISSING_KEY = {"NoSuchKey", "404", "NotFound"}
_TRANSIENT = {
    "ConditionalRequestConflict",
    "SlowDown",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "InternalError",
    "ServiceUnavailable",
    "Throttling",
    "ThrottlingException",
    "OperationAborted",
    "503",
    "500",
}
_CONNECTION = (
    bex.ConnectionError,
    bex.EndpointConnectionError,
    bex.ConnectTimeoutError,
    bex.ReadTimeoutError,
    bex.ConnectionClosedError,
    bex.ProxyConnectionError,
    bex.ResponseStreamingError,
    bex.IncompleteReadError,
    bex.HTTPClientError,
)


def _code(error: bex.ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def _status(error: bex.ClientError) -> int:
    return int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def _transient(error: Exception) -> bool:
    if isinstance(error, _CONNECTION):
        return True
    if isinstance(error, bex.ClientError):
        status = _status(error)  # 501 Not Implemented: the server will not do it, ever
        return _code(error) in _TRANSIENT or (status >= 500 and status != 501) or status == 409
    return False


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


class S3Store(Store):
    """A store under s3://bucket/prefix; keys are relative to the prefix."""

    def __init__(self, bucket: str, prefix: str = "", settings: S3Settings | None = None, session=None):
        if not bucket:
            raise StoreError("an S3 store needs a bucket: s3://bucket/prefix")
        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.uri = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self.settings = settings or S3Settings.from_env()
        self._session = session or boto3.session.Session()
        try:
            self.client = self._client(self.settings.read_timeout, None)
        except bex.BotoCoreError as error:  # e.g. a profile that does not exist, an invalid endpoint URL
            raise StoreError(f"cannot configure S3 for {self.uri}: {self._scrub(_one_line(error))}") from None
        self.endpoint = redacted(self.client.meta.endpoint_url or "")
        self.objects_at_once = self.settings.objects

    @classmethod
    def from_uri(cls, uri: str) -> "S3Store":
        check_store_uri(uri)  # credentials refused without echoing them; a bucket
        parsed = urlparse(uri)
        if parsed.scheme != "s3":
            raise StoreError(f"not an S3 URI: {redacted(uri)!r}")
        return cls(parsed.netloc, parsed.path)

    def __repr__(self) -> str:
        return f"S3Store({self.uri!r}, endpoint={self.endpoint!r})"

    # Client and error handling ------------------------------------------------------------------

    def _client(self, read_timeout: float, max_attempts: int | None, style: str | None = None):
        retries = {"mode": "standard"} if max_attempts is None else {"mode": "standard", "max_attempts": max_attempts}
        style = style or self.settings.addressing_style
        config = Config(
            region_name=self._session.region_name or "us-east-1",
            connect_timeout=self.settings.connect_timeout,
            read_timeout=read_timeout,
            retries=retries,
            # objects at once, each with up to `concurrency` parts in flight plus the parents it reads
            max_pool_connections=2 * self.settings.objects * max(10, self.settings.concurrency),
            user_agent_extra="esgd",
            s3={"addressing_style": style} if style else None,
        )
        client = self._session.client("s3", config=config)
        if style is None and not self._configured_style() and not _on_aws(client.meta.endpoint_url):
            return self._client(read_timeout, max_attempts, "path")
        return client

    def _configured_style(self) -> str | None:
        try:
            return (self._session._session.get_scoped_config().get("s3") or {}).get("addressing_style")
        except Exception:  # noqa: BLE001 - an unreadable profile shows up on the first request
            return None

    def _scrub(self, text: str) -> str:
        try:
            creds = self._session.get_credentials()
            frozen = creds.get_frozen_credentials() if creds else None
        except Exception:  # noqa: BLE001 - no credentials to scrub is not an error of its own
            frozen = None
        for secret in (frozen.access_key, frozen.secret_key, frozen.token) if frozen else ():
            if secret:
                text = text.replace(secret, "***")
        return text

    def _error(self, error: Exception, action: str, key: str | None, attempts: int = 1) -> StoreError:
        """One clear line for a failed call; never the credentials."""
        where = f"{self.uri}/{key}" if key else self.uri
        tried = f" (gave up after {attempts} attempts)" if attempts > 1 else ""
        if isinstance(error, (bex.NoCredentialsError, bex.PartialCredentialsError)):
            return StoreError(
                f"no S3 credentials for {self.uri}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                "or AWS_PROFILE with a shared credentials file"
            )
        if isinstance(error, _CONNECTION):
            reason = {
                bex.ConnectTimeoutError: f"connect timed out after {self.settings.connect_timeout:g} s",
                bex.ReadTimeoutError: "no response in time",
                bex.EndpointConnectionError: "connection failed",
            }.get(type(error), "connection lost")
            return StoreUnavailable(f"cannot reach the S3 endpoint {self.endpoint} for {where}: {reason}{tried}")
        if isinstance(error, bex.ClientError):
            code, status = _code(error), _status(error)
            message = _one_line(error.response.get("Error", {}).get("Message", "")) or f"HTTP {status}"
            if code == "NoSuchBucket":
                return StoreError(
                    f"S3 bucket {self.bucket!r} does not exist at {self.endpoint}: create it first (store {self.uri})"
                )
            if code in _MISSING_KEY and key is not None:
                return NotFound(f"{where} not found")
            if code in _AUTH or status == 403:
                what = (
                    "access denied" if code in ("AccessDenied", "AllAccessDisabled") else "the credentials were refused"
                )
                return StoreError(
                    f"S3 {action} {where}: {what} ({code or status}) at {self.endpoint}: check AWS_ACCESS_KEY_ID / "
                    "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) and their permissions on the bucket"
                )
            kind = StoreUnavailable if _transient(error) else StoreError  # 5xx, throttling: it may pass
            return kind(self._scrub(f"S3 {action} {where} failed: {code or status}: {message}{tried}"))
        if isinstance(error, bex.BotoCoreError):
            return StoreError(self._scrub(f"S3 {action} {where} failed: {_one_line(error)}{tried}"))
        raise error

    def _call(self, action: str, key: str | None, fn: Callable[[], T], attempts: int | None = None) -> T:
        """fn() with bounded retries on transient failures; other failures map to StoreError at once."""
        attempts = attempts or self.settings.retries
        for attempt in range(1, attempts + 1):
            try:
                return fn()
            except (bex.BotoCoreError, bex.ClientError) as error:
                if attempt == attempts or not _transient(error):
                    raise self._error(error, action, key, attempt) from None
                delay = min(8.0, 0.5 * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
                log.warning("%s; retry %d/%d in %.1f s", self._error(error, action, key), attempt, attempts - 1, delay)
                time.sleep(delay)
        raise AssertionError("unreachable")

    def _key(self, key: str) -> str:
        if not key or key.startswith("/") or ".." in key.split("/"):
            raise StoreError(f"invalid key {key!r}")
        return f"{self.prefix}/{key}" if self.prefix else key

    # The Store interface ------------------------------------------------------------------------

    def put(self, key: str, data: bytes) -> None:
        part = self.settings.part_size
        self._upload(key, (data[i : i + part] for i in range(0, len(data), part)))

    def put_if_absent(self, key: str, data: bytes) -> bool:
        name = self._key(key)

        def attempt() -> bool:
            try:
                self.client.put_object(Bucket=self.bucket, Key=name, Body=data, IfNoneMatch="*")
                return True
            except bex.ClientError as error:
                # 412: the key exists. A retried PUT whose first try did land gets 412 too: the
                # object is then ours, and Store.commit reads it back, so the outcome is the same.
                if _status(error) == 412 or _code(error) == "PreconditionFailed":
                    return False
                raise

        return self._call("commit", key, attempt)

    def get(self, key: str) -> bytes:
        name, part = self._key(key), self.settings.part_size

        def first_part() -> bytes | tuple:
            try:
                response = self.client.get_object(Bucket=self.bucket, Key=name, Range=f"bytes=0-{part - 1}")
            except bex.ClientError as error:
                if _status(error) != 416:
                    raise
                return b""  # an empty object has no byte 0
            content_range = response.get("ContentRange")  # "bytes 0-99/1234"; absent if the server ignored Range
            size = int(content_range.rpartition("/")[2]) if content_range else 0
            if size <= part:
                return response["Body"].read()
            return response["Body"], size, response.get("ETag")

        first = self._call("get", key, first_part)
        if isinstance(first, bytes):
            return first
        # A large object: the rest in parallel ranged GETs, each pinned to the first response's
        # ETag (If-Match) so that an overwrite meanwhile fails the read instead of mixing versions,
        # written straight into the result's buffer (a BytesIO hands its buffer over without a copy).
        body, size, etag = first
        pin = {"IfMatch": etag} if etag else {}
        out = io.BytesIO()
        out.seek(size - 1)
        out.write(b"\0")
        view = out.getbuffer()

        def fill(stream, start: int, stop: int) -> None:
            while start < stop:
                piece = stream.read(min(1 << 20, stop - start))
                if not piece:
                    raise bex.IncompleteReadError(actual_bytes=start, expected_bytes=stop)
                view[start : start + len(piece)] = piece
                start += len(piece)

        def fetch(start: int) -> None:
            stop = min(start + part, size)
            if start == 0:  # the first response's body, unless it broke off
                try:
                    return self._call("get", key, lambda: fill(body, 0, stop), attempts=1)
                except StoreError:
                    pass
            self._call(
                "get",
                key,
                lambda: fill(
                    self.client.get_object(Bucket=self.bucket, Key=name, Range=f"bytes={start}-{stop - 1}", **pin)[
                        "Body"
                    ],
                    start,
                    stop,
                ),
            )

        with ThreadPoolExecutor(self.settings.concurrency) as pool:
            list(pool.map(fetch, range(0, size, part)))
        view.release()
        return out.getvalue()

    def exists(self, key: str) -> bool:
        name = self._key(key)
        try:
            self._call("head", key, lambda: self.client.head_object(Bucket=self.bucket, Key=name))
        except NotFound:
            return False
        return True

    def delete(self, key: str) -> None:
        name = self._key(key)  # S3 answers 204 for an absent key too
        self._call("delete", key, lambda: self.client.delete_object(Bucket=self.bucket, Key=name))

    def list(self, prefix: str) -> list[str]:
        root = f"{self._key(prefix.strip('/'))}/"
        skip = len(self.prefix) + 1 if self.prefix else 0

        def pages() -> list[str]:
            out = []
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=root):
                out += [o["Key"][skip:] for o in page.get("Contents", []) if not o["Key"].endswith("/")]
            return out

        return sorted(self._call("list", prefix, pages))

    def check_writable(self) -> None:
        """Bucket exists, endpoint answers and the credentials are accepted (a LIST of at most one
        key under the prefix); writes nothing. Bounded: two tries with short timeouts."""
        probe = self._client(min(self.settings.read_timeout, 5.0), 2)
        prefix = f"{self.prefix}/" if self.prefix else ""
        self._call(
            "list", None, lambda: probe.list_objects_v2(Bucket=self.bucket, Prefix=prefix, MaxKeys=1), attempts=1
        )

    # Streaming ------------------------------------------------------------------------------------

    def open_read(self, key: str) -> BinaryIO:
        return _ObjectReader(self, key)

    def write_stream(self, key: str, pieces: Iterable[bytes]) -> BlobRef:
        """Upload byte pieces as they come, re-cut into parts: memory holds (concurrency + 2)
        parts at most, whatever the object's size."""
        digest, size = hashlib.sha256(), 0

        def parts() -> Iterator[bytes]:
            nonlocal size
            buffer = bytearray()
            for piece in pieces:
                digest.update(piece)
                size += len(piece)
                buffer += piece
                del piece
                while len(buffer) >= self.settings.part_size:
                    part = bytes(memoryview(buffer)[: self.settings.part_size])
                    del buffer[: self.settings.part_size]
                    yield part
                    del part
            yield bytes(buffer)

        self._upload(key, parts())
        return BlobRef(key, digest.hexdigest(), size)

    def _upload(self, key: str, parts: Iterator[bytes]) -> None:
        """Write an object from its parts (all part_size bytes but the last). One part: a single
        PUT. More: a multipart upload with `concurrency` parts in flight, each part retried on its
        own; completed only when every part is in (so readers see the whole object or nothing),
        aborted on any failure, including one of the code producing the parts."""
        name = self._key(key)
        head = [next(parts, b""), next(parts, b"")]
        if not head[1]:
            whole = head.pop(0)
            self._call("put", key, lambda: self.client.put_object(Bucket=self.bucket, Key=name, Body=whole))
            return
        started = self._call("put", key, lambda: self.client.create_multipart_upload(Bucket=self.bucket, Key=name))
        upload = started["UploadId"]
        etags: dict[int, str] = {}

        def send(number: int, body: bytes) -> None:
            etags[number] = self._call(
                "put",
                key,
                lambda: self.client.upload_part(
                    Bucket=self.bucket, Key=name, UploadId=upload, PartNumber=number, Body=body
                ),
            )["ETag"]

        def bodies() -> Iterator[bytes]:
            while head:
                yield head.pop(0)
            yield from parts

        try:
            with ThreadPoolExecutor(self.settings.concurrency) as pool:
                flying: set = set()
                source = bodies()
                for number in itertools.count(1):
                    while len(flying) >= self.settings.concurrency:  # make the next part only when it can go
                        done, flying = wait(flying, return_when=FIRST_COMPLETED)
                        for future in done:
                            future.result()
                    body = next(source, b"")
                    if not body:
                        break
                    flying.add(pool.submit(send, number, body))
                    del body
                for future in flying:
                    future.result()
            listing = {"Parts": [{"PartNumber": n, "ETag": etags[n]} for n in sorted(etags)]}
            self._call(
                "put",
                key,
                lambda: self.client.complete_multipart_upload(
                    Bucket=self.bucket, Key=name, UploadId=upload, MultipartUpload=listing
                ),
            )
        except BaseException:
            try:
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=name, UploadId=upload)
            except Exception:  # noqa: BLE001 - the first error is the one to report
                log.warning("S3 put %s: could not abort the multipart upload", key)
            raise


def _on_aws(url: str | None) -> bool:
    host = urlparse(url or "").hostname or ""
    return host.endswith(".amazonaws.com") or host.endswith(".amazonaws.com.cn")


class _ObjectReader(io.RawIOBase):
    """A forward-only stream of one object; a connection lost mid-way resumes with a ranged GET
    pinned to the object's ETag."""

    def __init__(self, store: S3Store, key: str):
        self._store, self._key, self._name = store, key, store._key(key)
        self._pos, self._etag, self._body = 0, None, None
        self._open()

    def _open(self) -> None:
        extra = {"Range": f"bytes={self._pos}-", "IfMatch": self._etag} if self._pos else {}
        response = self._store._call(
            "get", self._key, lambda: self._store.client.get_object(Bucket=self._store.bucket, Key=self._name, **extra)
        )
        self._etag = self._etag or response.get("ETag")
        self._body = response["Body"]

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        for attempt in range(1, self._store.settings.retries + 1):
            try:
                data = self._body.read(None if n is None or n < 0 else n)
                break
            except _CONNECTION as error:
                if attempt == self._store.settings.retries:
                    raise self._store._error(error, "get", self._key, attempt) from None
                log.warning("S3 get %s: stream interrupted at byte %d; resuming", self._key, self._pos)
                self._body.close()
                self._open()
        self._pos += len(data)
        return data

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if self._body is not None:
            self._body.close()
        super().close()
