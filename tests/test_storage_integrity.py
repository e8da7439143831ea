"""A checkpoint object that was truncated or altered in the store (local and S3) fails the step that
reads it, with an error naming its key, and its bytes never reach a model or an offspring."""

import pytest

from esgd.controller.runs import create_or_resume
from esgd.core import keys
from esgd.core.manifest import MANIFEST, from_parquet
from esgd.core.spec import parse_spec
from esgd.store import checkpoint
from esgd.store.base import IntegrityError, sha256
from esgd.store.uri import open_store
from esgd.worker.cli import main as worker_main
from esgd.worker.cli import run_step
from esgd.worker.run import Run

SPEC = {
    "name": "integrity", "seed": 3, "task": "esgd.worker.tasks.digits:task", "task_args": {"hidden": 8},
    "generations": 2, "population": {"mu": 4, "offspring": 4}, "sgd": {"batch_size": [64]},
}


def corrupt(data: bytes, how: str) -> bytes:
    if how == "truncated":
        return data[: len(data) // 2]
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :]


@pytest.fixture
def run(store_uri) -> Run:
    store = open_store(store_uri)
    spec = parse_spec(SPEC)
    create_or_resume(store, spec, "r")
    run = Run(store, "r", spec, "cpu")
    run_step(run, "init", None, 0)
    return run


@pytest.fixture
def decoded(monkeypatch) -> list[str]:
    """sha256 of every checkpoint decoded into a model."""
    seen, real = [], checkpoint.decode
    monkeypatch.setattr(checkpoint, "decode", lambda data: (seen.append(sha256(bytes(data))), real(data))[1])
    return seen


@pytest.mark.parametrize("how", ["truncated", "altered"])
def test_train_refuses_a_corrupt_parent_checkpoint(run, how, decoded, capsys):
    victim = from_parquet(run.store.get(keys.parents(run.id, 0)), MANIFEST)[1]
    bad = corrupt(run.store.get(victim["checkpoint"]), how)
    run.store.put(victim["checkpoint"], bad)  # damaged behind the store's back
    with pytest.raises(IntegrityError, match=f"checksum mismatch for {victim['checkpoint']}"):
        run_step(run, "train", 0, 0)
    assert worker_main(["train", "--run", run.uri, "--gen", "0", "--device", "cpu"]) == 2
    assert f"esgd-worker: error: checksum mismatch for {victim['checkpoint']}" in capsys.readouterr().err
    assert sha256(bad) not in decoded  # never loaded into a model, so never trained on
    assert not run.store.exists(keys.train_record(run.id, 0, victim["member"]))
    assert [key for key in run.store.list(f"{keys.gen(run.id, 0)}/train") if f"/{victim['member']}." in key] == []


@pytest.mark.parametrize("how", ["truncated", "altered"])
def test_evolve_refuses_a_corrupt_parent_and_commits_no_offspring_of_it(run, how):
    run_step(run, "train", 0, 0)
    rows = from_parquet(run.store.get(keys.parents(run.id, 0)), MANIFEST)
    records = [run.store.get_json(keys.train_record(run.id, 0, r["member"])) for r in rows]
    # The fittest trained member is a parent of most offspring: damage its checkpoint.
    victim = min(records, key=lambda r: r["fitness"])
    run.store.put(victim["checkpoint"], corrupt(run.store.get(victim["checkpoint"]), how))
    with pytest.raises(IntegrityError, match=f"checksum mismatch for {victim['checkpoint']}"):
        run_step(run, "evolve", 0, 0)
    committed = [k for k in run.store.list(f"{keys.round_(run.id, 0, 0)}/offspring") if k.endswith(".json")]
    assert len(committed) < 4
    for key in committed:  # offspring made before the damaged parent came up are fine...
        record = run.store.get_json(key)
        assert victim["member"] not in record["parents"]
        run.store.get_verified(record)
    # ...and the offspring that read it was never completed: no record, no object
    objects = [k for k in run.store.list(f"{keys.round_(run.id, 0, 0)}/offspring") if k.endswith(".arrow")]
    assert len(objects) == len(committed)


def test_a_repaired_store_lets_the_step_complete(run):
    victim = from_parquet(run.store.get(keys.parents(run.id, 0)), MANIFEST)[0]
    good = run.store.get(victim["checkpoint"])
    run.store.put(victim["checkpoint"], corrupt(good, "altered"))
    with pytest.raises(IntegrityError):
        run_step(run, "train", 0, 0)
    run.store.put(victim["checkpoint"], good)
    run_step(run, "train", 0, 0)  # the re-run only trains what has no record yet
    for row in from_parquet(run.store.get(keys.parents(run.id, 0)), MANIFEST):
        run.store.get_verified(run.store.get_json(keys.train_record(run.id, 0, row["member"])))
