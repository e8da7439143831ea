"""A checkpoint object that was truncated or altered in the store (local and S3) fails the step that
reads it, with an error naming its key, and its bytes never reach a model or an offspring."""

import pytest

from esgd.cli.worker import main as worker_main
from esgd.controller.runs import create_or_resume
from esgd.core import keys
from esgd.core.plan import Step
from esgd.core.records import Member, OffspringRecord, TrainRecord
from esgd.core.spec import parse_spec
from esgd.core.tables import rows
from esgd.store import checkpoint
from esgd.store.base import IntegrityError, sha256
from esgd.store.uri import open_store
from esgd.worker import steps
from esgd.worker.run import Run

from helpers import small

SPEC = small(name="integrity", seed=3)


def corrupt(data: bytes, how: str) -> bytes:
    if how == "truncated":
        return data[: len(data) // 2]
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :]


@pytest.fixture
def run(store_uri) -> Run:
    ref, _ = create_or_resume(open_store(store_uri), parse_spec(SPEC), "r")
    run = Run(ref, "cpu")
    steps.run(run, Step("init"))
    return run


def parents(run: Run) -> list[Member]:
    return rows(run.store.get(keys.parents(run.id, 0)), Member)


@pytest.fixture
def decoded(monkeypatch) -> list[str]:
    """sha256 of every checkpoint decoded into a model."""
    seen, real = [], checkpoint.decode
    monkeypatch.setattr(checkpoint, "decode", lambda data: (seen.append(sha256(bytes(data))), real(data))[1])
    return seen


@pytest.mark.parametrize("how", ["truncated", "altered"])
def test_train_refuses_a_corrupt_parent_checkpoint(run, how, decoded, capsys):
    victim = parents(run)[1]
    bad = corrupt(run.store.get(victim.checkpoint.key), how)
    run.store.put(victim.checkpoint.key, bad)  # damaged behind the store's back
    with pytest.raises(IntegrityError, match=f"checksum mismatch for {victim.checkpoint.key}"):
        steps.run(run, Step("train", 0))
    assert worker_main(["train", "--run", run.uri, "--gen", "0", "--device", "cpu"]) == 2
    assert f"esgd-worker: error: checksum mismatch for {victim.checkpoint.key}" in capsys.readouterr().err
    assert sha256(bad) not in decoded  # never loaded into a model, so never trained on
    assert not run.store.exists(keys.train_record(run.id, 0, victim.member))
    assert [key for key in run.store.list(f"{keys.gen(run.id, 0)}/train") if f"/{victim.member}." in key] == []


@pytest.mark.parametrize("how", ["truncated", "altered"])
def test_evolve_refuses_a_corrupt_parent_and_commits_no_offspring_of_it(run, how):
    steps.run(run, Step("train", 0))
    records = [run.store.read(keys.train_record(run.id, 0, m.member), TrainRecord) for m in parents(run)]
    # The fittest trained member is a parent of most offspring: damage its checkpoint.
    victim = min(records, key=lambda r: r.fitness)
    run.store.put(victim.checkpoint.key, corrupt(run.store.get(victim.checkpoint.key), how))
    with pytest.raises(IntegrityError, match=f"checksum mismatch for {victim.checkpoint.key}"):
        steps.run(run, Step("evolve", 0, 0))
    committed = [k for k in run.store.list(f"{keys.round_(run.id, 0, 0)}/offspring") if k.endswith(".json")]
    assert len(committed) < 4
    for key in committed:  # offspring made before the damaged parent came up are fine...
        record = run.store.read(key, OffspringRecord)
        assert victim.member not in record.parents
        run.blobs.get(record.checkpoint)
    # ...and the offspring that read it was never completed: no record, no object
    objects = [k for k in run.store.list(f"{keys.round_(run.id, 0, 0)}/offspring") if k.endswith(".arrow")]
    assert len(objects) == len(committed)


def test_a_repaired_store_lets_the_step_complete(run):
    victim = parents(run)[0]
    good = run.store.get(victim.checkpoint.key)
    run.store.put(victim.checkpoint.key, corrupt(good, "altered"))
    with pytest.raises(IntegrityError):
        steps.run(run, Step("train", 0))
    run.store.put(victim.checkpoint.key, good)
    steps.run(run, Step("train", 0))  # the re-run only trains what has no record yet
    for m in parents(run):
        run.blobs.get(run.store.read(keys.train_record(run.id, 0, m.member), TrainRecord).checkpoint)
