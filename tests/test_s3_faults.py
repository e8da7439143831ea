"""Faults on a real S3 server (SeaweedFS on loopback), each bounded in time, each checking that
nothing committed was lost: the server crashing mid-run (and coming back on the same data), a worker
killed with SIGKILL in the middle of an upload, the driver killed between steps, and stores that
cannot be used at all (wrong credentials, missing bucket, unreachable endpoint)."""

import logging
import signal
import subprocess
import sys
import threading
import time

import pytest
import yaml

from esgd.cli.main import main
from esgd.controller.runs import create_or_resume, default_run_id
from esgd.core import keys
from esgd.core.plan import Step
from esgd.core.records import HistoryRow, TrainRecord
from esgd.core.spec import parse_spec
from esgd.core.tables import read_table
from esgd.store.base import Store
from esgd.store.blobs import Blobs
from esgd.store.s3 import S3Store
from esgd.store.uri import open_store
from esgd.worker import steps
from esgd.worker.run import Run

from conftest import TEST_BUCKET, use_server
from helpers import execute, small
from seaweed import free_port

SPEC = small(name="faults", seed=11)
RUN_ID = default_run_id(parse_spec(SPEC))
ESGD = [sys.executable, "-c", "import sys; from esgd.cli.main import main; sys.exit(main())"]


def history(store: Store) -> list[dict]:
    return read_table(store.get(keys.history(RUN_ID)), HistoryRow).to_pylist()


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> list[dict]:
    """The history of the same spec, run undisturbed (on a local store: the backends agree)."""
    store = open_store(str(tmp_path_factory.mktemp("reference") / "store"))
    run, _ = create_or_resume(store, parse_spec(SPEC), None)
    execute(Run(run, "cpu"))
    return history(store)


@pytest.fixture
def spec_file(tmp_path) -> str:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(SPEC))
    return str(path)


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def kill_at_marker(code: str, marker, what: str) -> None:
    """Run `code` in a fresh Python, wait (bounded) until it writes `marker`, then SIGKILL it."""
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: marker.exists() or process.poll() is not None, 120, what)
        assert process.poll() is None, process.stdout.read().decode()
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(30)


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("esgd: error: ")
    return lines[0]


def commits_under(part: str, after: int, then):
    """A Store.commit that calls then() once, right after the `after`-th record whose key holds `part`."""
    real, seen = Store.commit, []

    def commit(self, key, record):
        result = real(self, key, record)
        if part in key:
            seen.append((key, result))
            if len(seen) == after:
                then()
        return result

    return commit, seen


# (a) The server crashes in the middle of a step ---------------------------------------------------


def test_server_crash_mid_step_fails_clearly_then_esgd_run_resumes(
    own_server, spec_file, reference, monkeypatch, capsys, caplog
):
    uri = "s3://faults/crash"
    hook, committed = commits_under("/offspring/", 2, lambda: own_server.stop(kill=True))
    monkeypatch.setattr(S3Store, "commit", hook)
    assert main(["run", spec_file, "--store", uri, "--device", "cpu"]) == 75  # evolve dies half-way: transient
    assert any("; retry " in r.getMessage() for r in caplog.records)  # the retries are logged...
    lines = capsys.readouterr().err.strip().splitlines()
    assert [line for line in lines if line.startswith("esgd: error:")] == lines[-1:]  # ...then one error line
    assert lines[-1].startswith("esgd: error: cannot reach the S3 endpoint") and "gave up after" in lines[-1]
    assert lines[-1].endswith("(it may pass: run the same command again)")
    monkeypatch.undo()
    use_server(monkeypatch, own_server)

    own_server.start()  # same data directory, same ports
    store = open_store(uri)
    for key, record in committed:  # what was committed before the crash survived it
        assert store.read(key, type(record)) == record
        Blobs(store).get(record.checkpoint)
    done = subprocess.run(
        [*ESGD, "run", spec_file, "--store", uri, "--device", "cpu"], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert "resuming" in done.stderr and done.stdout.strip() == f"{uri}/runs/{RUN_ID}"
    assert history(store) == reference
    for key, record in committed:
        assert store.read(key, type(record)) == record


def test_server_restarted_while_a_step_retries_the_run_completes(own_server, spec_file, reference, monkeypatch, capsys):
    monkeypatch.setenv("ESGD_S3_RETRIES", "8")  # backoff 0.5, 1, 2, 4, 4... s: at least 15 s of retrying
    retrying = threading.Event()

    class Retries(logging.Handler):
        def emit(self, record):
            if "retry" in record.getMessage():
                retrying.set()

    handler = Retries()
    logging.getLogger("esgd.store.s3").addHandler(handler)
    restarted = []

    def restart_once_retrying():
        if retrying.wait(60):
            own_server.start()
            restarted.append(True)

    def crash():
        own_server.stop(kill=True)
        threading.Thread(target=restart_once_retrying, daemon=True).start()

    hook, _ = commits_under("/fitness/", 3, crash)  # in the middle of evaluating generation 0
    monkeypatch.setattr(S3Store, "commit", hook)
    try:
        assert main(["run", spec_file, "--store", "s3://faults/restart", "--device", "cpu"]) == 0, (
            capsys.readouterr().err
        )
    finally:
        logging.getLogger("esgd.store.s3").removeHandler(handler)
    assert retrying.is_set() and restarted  # it did go through a retry, and got through
    assert history(open_store("s3://faults/restart")) == reference


# (b) A worker killed in the middle of an upload ---------------------------------------------------

TORN_UPLOAD = """
import pathlib, sys, threading
from esgd.store import s3
real, uploads = s3.S3Store._upload, []

def upload(self, key, parts):
    if key.endswith(".arrow") and "/train/" in key:
        uploads.append(key)
        if len(uploads) == 2:  # the second trained checkpoint: leave it torn, then hang until killed
            data = b"".join(parts)
            name = self._key(key)
            self.client.put_object(Bucket=self.bucket, Key=name, Body=data[: len(data) // 2])
            started = self.client.create_multipart_upload(Bucket=self.bucket, Key=name)
            self.client.upload_part(Bucket=self.bucket, Key=name, UploadId=started["UploadId"], PartNumber=1, Body=data)
            pathlib.Path(MARKER).write_text(key)
            threading.Event().wait()
    return real(self, key, parts)

s3.S3Store._upload = upload
from esgd.cli.worker import main
sys.exit(main(["train", "--run", RUN, "--gen", "0", "--device", "cpu"]))
"""


def test_worker_killed_mid_upload_leaves_no_torn_checkpoint_in_the_records(s3_uri, seaweed, tmp_path):
    store = open_store(s3_uri)
    run = Run(create_or_resume(store, parse_spec(SPEC), None)[0], "cpu")
    steps.run(run, Step("init"))

    marker = tmp_path / "uploading"
    code = f"MARKER = {str(marker)!r}\nRUN = {run.uri!r}\n" + TORN_UPLOAD
    kill_at_marker(code, marker, "the worker to start its second upload")
    torn = marker.read_text()
    member = torn.split("/")[-1].split(".")[0]  # gen-0000/train/<member>.<attempt>.arrow

    # The torn object is in the bucket, but no record points at it: readers never see it.
    assert f"{store.prefix}/{torn}" in seaweed.keys(TEST_BUCKET, store.prefix)
    assert not store.exists(keys.train_record(RUN_ID, 0, member))
    records = {k: store.read(k, TrainRecord) for k in store.list(f"{keys.gen(RUN_ID, 0)}/train") if k.endswith(".json")}
    assert 1 <= len(records) < 4
    for record in records.values():
        assert record.checkpoint.key != torn
        run.blobs.get(record.checkpoint)

    # The re-run trains what has no record, under a new attempt key, and keeps what was committed.
    again = subprocess.run(
        [sys.executable, "-m", "esgd.cli.worker", "train", "--run", run.uri, "--gen", "0", "--device", "cpu"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 0, again.stderr
    for key, record in records.items():
        assert store.read(key, TrainRecord) == record
    redone = store.read(keys.train_record(RUN_ID, 0, member), TrainRecord)
    assert redone.checkpoint.key != torn and run.blobs.get(redone.checkpoint)
    assert len([k for k in store.list(f"{keys.gen(RUN_ID, 0)}/train") if k.endswith(".json")]) == 4
    execute(Run.open(run.uri, "cpu"))  # and the run goes on to the end
    assert {r["generation"] for r in history(store)} == {0, 1}


# (c) The driver killed between steps --------------------------------------------------------------

KILLED_DRIVER = """
import pathlib, sys, threading
from esgd.worker import steps
real = steps.run

def run(worker, step):
    real(worker, step)
    if step.command == "evolve":  # generation 0's offspring are committed: hang until killed
        pathlib.Path(MARKER).write_text("evolved")
        threading.Event().wait()

steps.run = run
from esgd.cli.main import main
sys.exit(main(["run", SPEC, "--store", STORE, "--device", "cpu"]))
"""


def test_driver_killed_between_steps_and_run_again_gives_the_same_history(s3_uri, spec_file, tmp_path, reference):
    marker = tmp_path / "evolved"
    code = f"MARKER = {str(marker)!r}\nSPEC = {spec_file!r}\nSTORE = {s3_uri!r}\n" + KILLED_DRIVER
    kill_at_marker(code, marker, "the driver to finish the evolve step")
    store = open_store(s3_uri)
    offspring = {k: store.get(k) for k in store.list(keys.round_(RUN_ID, 0, 0)) if k.endswith(".json")}
    assert len(offspring) == 4 and not store.exists(keys.history(RUN_ID))

    done = subprocess.run(
        [*ESGD, "run", spec_file, "--store", s3_uri, "--device", "cpu"], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert "resuming" in done.stderr
    assert history(store) == reference
    for key, record in offspring.items():  # nothing committed before the kill was redone
        assert store.get(key) == record


# (d) Stores that cannot be used -------------------------------------------------------------------


@pytest.mark.parametrize(
    "fault", ["wrong secret", "unknown access key", "missing bucket", "unreachable endpoint", "no credentials"]
)
def test_unusable_store_gives_one_clear_line_exit_2_or_75_and_writes_nothing(
    fault, seaweed, s3_uri, spec_file, monkeypatch, capsys
):
    uri = s3_uri
    expected = {
        "wrong secret": "credentials were refused (SignatureDoesNotMatch)",
        "unknown access key": "credentials were refused (InvalidAccessKeyId)",
        "missing bucket": "S3 bucket 'esgd-missing-bucket' does not exist",
        "unreachable endpoint": "cannot reach the S3 endpoint http://127.0.0.1:",
        "no credentials": "no S3 credentials",
    }[fault]
    if fault == "wrong secret":
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    elif fault == "unknown access key":
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIANOSUCHKEY")
    elif fault == "missing bucket":
        uri = "s3://esgd-missing-bucket/runs-here"
    elif fault == "unreachable endpoint":
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{free_port()}")
    else:
        monkeypatch.delenv("AWS_ACCESS_KEY_ID")
        monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    began = time.monotonic()
    code = main(["run", spec_file, "--store", uri])  # 75 for an endpoint that may come back, else 2
    elapsed = time.monotonic() - began
    out, err = capsys.readouterr()
    assert code == (75 if fault == "unreachable endpoint" else 2) and out == ""
    line = one_error_line(err)
    assert expected in line, line
    assert elapsed < 20  # bounded timeouts and retries, not minutes
    for secret in (seaweed.secret_key, seaweed.access_key, "not-the-secret", "AKIANOSUCHKEY"):
        assert secret not in err
    # Nothing written: the prefix is empty, and the missing bucket was not created on the way.
    assert seaweed.keys(TEST_BUCKET, s3_uri.removeprefix(f"s3://{TEST_BUCKET}/")) == []
    assert "esgd-missing-bucket" not in [b["Name"] for b in seaweed.client().list_buckets()["Buckets"]]


def test_unusable_store_exits_2_from_the_command_line_too(seaweed, s3_uri, spec_file, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    done = subprocess.run([*ESGD, "run", spec_file, "--store", s3_uri], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert "credentials were refused" in one_error_line(done.stderr)
    assert "not-the-secret" not in done.stderr and seaweed.secret_key not in done.stderr
    assert seaweed.keys(TEST_BUCKET, s3_uri.removeprefix(f"s3://{TEST_BUCKET}/")) == []


def test_test_servers_refuse_unsigned_requests(seaweed):
    import boto3
    from botocore import UNSIGNED
    from botocore.config import Config

    anonymous = boto3.client(
        "s3",
        endpoint_url=seaweed.endpoint,
        region_name="us-east-1",
        config=Config(signature_version=UNSIGNED, s3={"addressing_style": "path"}),
    )
    with pytest.raises(Exception, match="AccessDenied|Forbidden|403"):
        anonymous.list_objects_v2(Bucket=TEST_BUCKET, MaxKeys=1)


def test_a_worker_that_cannot_reach_the_store_exits_75_not_2(s3_uri, monkeypatch, capsys):
    """Transient trouble is not bad input: a worker whose store is unreachable exits 75, which Argo's
    retry expression retries (it never retries 2), and names the endpoint."""
    from esgd.cli.worker import main as worker

    run = create_or_resume(open_store(s3_uri), parse_spec(SPEC), "transient")[0]
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{free_port()}")  # the store goes away
    monkeypatch.setenv("ESGD_S3_RETRIES", "2")
    assert worker(["init", "--run", run.uri, "--device", "cpu"]) == 75
    err = capsys.readouterr().err.strip()
    assert err.startswith("esgd-worker: error: cannot reach the S3 endpoint") and err.endswith("(transient)")
