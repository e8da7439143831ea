"""The S3 store against a real S3 server (SeaweedFS on loopback): the Store contract, conditional
commits and their races, multipart transfers, streaming, retries, clear errors, no leaked secrets."""

import os
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import botocore.exceptions as bex
import pytest

from esgd.core.records import BlobRef, FitnessRecord
from esgd.store.base import NotFound, StoreError, sha256
from esgd.store.blobs import Blobs
from esgd.store.s3 import S3Settings, S3Store
from esgd.store.uri import open_store
from esgd.worker.transfers import Transfers

from conftest import TEST_BUCKET
from seaweed import free_port


@pytest.fixture
def store(s3_uri) -> S3Store:
    return open_store(s3_uri)


def small_parts(uri: str, **extra) -> S3Store:
    """A store with the smallest multipart parts S3 allows (5 MiB), so big objects stay small."""
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    return S3Store(bucket, prefix, S3Settings(part_size_mb=5, concurrency=4, **extra))


def test_store_contract(store):
    assert isinstance(store, S3Store) and store.uri.startswith(f"s3://{TEST_BUCKET}/")
    assert not store.exists("a/x.json") and store.list("a") == []
    with pytest.raises(NotFound, match="a/x.json"):
        store.get("a/x.json")
    store.put("a/x.json", b"one")
    store.put("a/x.json", b"two")  # put overwrites
    store.put("a/b/y.arrow", b"")  # empty objects round-trip
    store.put("ab/z.json", b"not under a/")
    assert store.get("a/x.json") == b"two" and store.get("a/b/y.arrow") == b""
    assert store.exists("a/x.json") and not store.exists("a/b")  # a "directory" is not a key
    assert store.list("a") == ["a/b/y.arrow", "a/x.json"] and store.list("a/") == store.list("a")
    with pytest.raises(StoreError, match="invalid key"):
        store.get("../escape")


def test_put_if_absent_is_a_conditional_put(store, seaweed):
    assert store.put_if_absent("rec.json", b"first") is True
    assert store.put_if_absent("rec.json", b"second") is False
    assert store.get("rec.json") == b"first"
    # The server itself refuses the second write (If-None-Match: *), not a check in the client.
    name = f"{store.prefix}/rec.json"
    with pytest.raises(bex.ClientError) as error:
        seaweed.client().put_object(Bucket=TEST_BUCKET, Key=name, Body=b"x", IfNoneMatch="*")
    assert error.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412


def test_racing_commits_have_exactly_one_winner(store):
    for trial in range(3):
        key = f"race-{trial}.json"
        with ThreadPoolExecutor(8) as pool:
            won = list(pool.map(lambda i, key=key: store.put_if_absent(key, str(i).encode()), range(8)))
        assert won.count(True) == 1
        assert store.get(key) == str(won.index(True)).encode()
        # Store.commit: every racer ends up with the one committed record
        key = f"commit-{trial}.json"
        with ThreadPoolExecutor(8) as pool:
            records = list(pool.map(lambda i, key=key: store.commit(key, FitnessRecord(str(i), float(i))), range(8)))
        assert len(set(records)) == 1


def test_large_objects_travel_as_parallel_multipart_transfers(s3_uri, seaweed):
    store = small_parts(s3_uri)
    data = os.urandom(12 * (1 << 20) + 12345)  # three parts, the last one short
    store.put("big.arrow", data)
    head = seaweed.client().head_object(Bucket=store.bucket, Key=f"{store.prefix}/big.arrow")
    assert head["ETag"].strip('"').endswith("-3")  # a multipart upload of 3 parts
    assert store.get("big.arrow") == data
    exact = data[: 10 << 20]  # a stream that ends on a part boundary
    blobs = Blobs(store)
    assert blobs.put_stream("exact.arrow", iter([exact[:7], exact[7:]])).size == len(exact)
    assert store.get("exact.arrow") == exact
    ref = blobs.put_stream("streamed.arrow", (data[i : i + 777_777] for i in range(0, len(data), 777_777)))
    assert ref == BlobRef("streamed.arrow", sha256(data), len(data))
    assert store.get("streamed.arrow") == data
    with blobs.open(ref) as stream:
        assert stream.read(10) == data[:10] and stream.read(len(data)) == data[10:]
        stream.finish()


def test_a_failed_stream_leaves_no_object_and_no_upload(s3_uri, seaweed):
    store = small_parts(s3_uri)

    def pieces():
        yield os.urandom(11 << 20)  # two parts go up...
        raise RuntimeError("the producer failed")  # ...then the code making the bytes fails

    with pytest.raises(RuntimeError, match="producer failed"):
        store.write_stream("torn.arrow", pieces())
    assert not store.exists("torn.arrow")
    uploads = seaweed.client().list_multipart_uploads(Bucket=store.bucket, Prefix=store.prefix).get("Uploads", [])
    assert uploads == []  # aborted


def test_a_stream_resumes_where_the_connection_dropped(store):
    data = os.urandom(3 << 20)
    store.put("blob", data)
    reader = store.open_read("blob")
    assert reader.read(1000) == data[:1000]
    real = reader._body.read
    calls = []

    def drops_once(n):
        if not calls:
            calls.append(n)
            raise bex.ResponseStreamingError(error="connection reset")
        return real(n)

    reader._body.read = drops_once
    assert reader.read(len(data)) + reader.read(len(data)) == data[1000:]  # resumed with a ranged GET
    assert calls


def test_transient_failures_are_retried_and_409_is_a_retry(store, monkeypatch):
    real = store.client.put_object
    failures = [
        bex.ClientError(
            {"Error": {"Code": "ConditionalRequestConflict"}, "ResponseMetadata": {"HTTPStatusCode": 409}}, "PutObject"
        ),
        bex.ClientError({"Error": {"Code": "InternalError"}, "ResponseMetadata": {"HTTPStatusCode": 500}}, "PutObject"),
    ]

    def flaky(**kwargs):
        if failures:
            raise failures.pop(0)
        return real(**kwargs)

    monkeypatch.setattr(store.client, "put_object", flaky)
    assert store.put_if_absent("retried.json", b"1") is True
    assert store.get("retried.json") == b"1" and not failures


def test_a_commit_whose_reply_was_lost_is_still_the_callers(store, monkeypatch):
    """The PUT lands, the reply is lost, the retry gets 412: Store.commit returns the record it wrote."""
    real = store.client.put_object
    lost = []

    def lands_then_drops(**kwargs):
        result = real(**kwargs)
        if not lost:
            lost.append(True)
            raise bex.ConnectionClosedError(endpoint_url=store.endpoint)
        return result

    monkeypatch.setattr(store.client, "put_object", lands_then_drops)
    assert store.commit("lost.json", FitnessRecord("a", 0.25)) == FitnessRecord("a", 0.25)


def test_retries_run_out_with_one_clear_line(s3_uri, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    store = small_parts(s3_uri, retries=2)
    with pytest.raises(StoreError) as error:
        store.put_if_absent("x.json", b"1")
    message = str(error.value)
    assert "cannot reach the S3 endpoint http://127.0.0.1:" in message and "gave up after 2 attempts" in message
    assert "\n" not in message and "x.json" in message


def test_check_writable_tells_the_three_failures_apart_and_writes_nothing(s3_uri, seaweed, monkeypatch):
    open_store(s3_uri).check_writable()  # fine, and writes nothing
    bucket, _, prefix = s3_uri.removeprefix("s3://").partition("/")
    assert seaweed.keys(bucket, prefix) == []
    with pytest.raises(StoreError, match="bucket 'esgd-no-such-bucket' does not exist"):
        open_store("s3://esgd-no-such-bucket/p").check_writable()
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-123")
    with pytest.raises(StoreError, match="credentials were refused") as error:
        open_store(s3_uri).check_writable()
    assert "wrong-secret-123" not in str(error.value) and seaweed.secret_key not in str(error.value)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(StoreError, match="cannot reach the S3 endpoint"):
        open_store(s3_uri).check_writable()
    assert seaweed.keys(bucket, prefix) == []


def test_an_endpoint_that_never_answers_fails_within_the_timeouts(s3_uri, monkeypatch):
    with socket.socket() as silent:  # accepts connections (kernel backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{silent.getsockname()[1]}")
        monkeypatch.setenv("ESGD_S3_READ_TIMEOUT", "0.5")
        with pytest.raises(StoreError, match="cannot reach the S3 endpoint .*no response in time"):
            open_store(s3_uri).check_writable()


def test_no_credentials_and_credentials_in_the_uri(s3_uri, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(StoreError, match="no S3 credentials"):
        open_store(s3_uri).check_writable()
    with pytest.raises(StoreError, match="credentials in a store URI are not supported") as error:
        open_store("s3://AKIDSECRET:hunter2@bucket/prefix")
    assert "hunter2" not in str(error.value) and "AKIDSECRET" not in str(error.value)


def test_credentials_never_appear_in_repr_logs_or_errors(store, seaweed, caplog, monkeypatch):
    caplog.set_level("DEBUG", logger="esgd")
    text = [repr(store), str(store.__dict__.get("uri"))]
    real = store.client.put_object
    failures = [bex.EndpointConnectionError(endpoint_url=store.endpoint)]

    def flaky(**kwargs):
        if failures:
            raise failures.pop(0)
        return real(**kwargs)

    monkeypatch.setattr(store.client, "put_object", flaky)
    store.put_if_absent("logged.json", b"1")  # logs a retry warning
    for bad in (dict(secret_key="not-the-secret-456"), dict(access_key="AKNOSUCHKEY789")):
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", bad.get("secret_key", seaweed.secret_key))
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", bad.get("access_key", seaweed.access_key))
        other = open_store(store.uri)
        for call in (other.check_writable, partial(other.get, "logged.json"), partial(other.put, "k", b"1")):
            with pytest.raises(StoreError) as error:
                call()
            text.append(str(error.value))
        text.append(repr(other))
    text += [r.getMessage() for r in caplog.records]
    assert any("retry" in line for line in text)
    blob = "\n".join(text)
    for secret in (seaweed.secret_key, seaweed.access_key, "not-the-secret-456", "AKNOSUCHKEY789"):
        assert secret not in blob


def test_settings_from_the_environment(monkeypatch):
    monkeypatch.setenv("ESGD_S3_PART_SIZE_MB", "8")
    monkeypatch.setenv("ESGD_S3_CONNECT_TIMEOUT", "1.5")
    monkeypatch.setenv("ESGD_S3_ADDRESSING_STYLE", "virtual")
    assert S3Settings.from_env() == S3Settings(part_size_mb=8, connect_timeout=1.5, addressing_style="virtual")
    for name, value in (
        ("ESGD_S3_PART_SIZE_MB", "4"),
        ("ESGD_S3_RETRIES", "many"),
        ("ESGD_S3_ADDRESSING_STYLE", "odd"),
    ):
        monkeypatch.setenv(name, value)
        with pytest.raises(StoreError, match=name):
            S3Settings.from_env()
        monkeypatch.delenv(name)


def test_a_run_uri_on_s3_opens_its_store(s3_uri):
    from esgd.store.uri import open_run, read_uri

    store = open_store(s3_uri)
    store.put("runs/r1/spec.yaml", b"name: x\n")
    opened, run_id = open_run(f"{s3_uri}/runs/r1")
    assert run_id == "r1" and opened.uri == store.uri
    assert read_uri(f"{s3_uri}/runs/r1/spec.yaml") == b"name: x\n"


def test_stores_are_usable_from_many_threads(store):
    errors = []

    def work(i):
        try:
            store.put(f"t/{i}", bytes([i]) * 1000)
            assert store.get(f"t/{i}") == bytes([i]) * 1000
        except Exception as error:  # noqa: BLE001 - any error in a thread fails the test below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(store.list("t")) == 16


def test_each_moves_a_few_objects_at_once_in_order_and_raises_the_first_error(store, monkeypatch):
    assert store.objects_at_once == 4 and open_store("file:///tmp/x").objects_at_once == 1
    monkeypatch.setenv("ESGD_S3_OBJECTS", "3")
    assert S3Settings.from_env().objects == 3
    transfers = Transfers.for_store(store)  # what a worker step uses on this store
    assert transfers == Transfers(objects=4, computing=4)
    threads, lock, both = set(), threading.Lock(), threading.Barrier(2, timeout=30)

    def put(i):
        with lock:
            threads.add(threading.get_ident())
        if i < 2:
            both.wait()  # the first two run at the same time (one at a time would break the barrier)
        store.put(f"each/{i:02d}", bytes([i]))
        return i

    assert transfers.each(put, range(12)) == list(range(12))
    assert len(store.list("each")) == 12 and 2 <= len(threads) <= 4

    def fails(i):
        if i in (5, 9):
            raise NotFound(f"item {i}")
        store.put(f"after/{i:02d}", b"x")

    with pytest.raises(NotFound, match="item 5"):
        transfers.each(fails, range(12))
    assert store.list("after")[:5] == [f"after/{i:02d}" for i in range(5)]  # the items before it are done
