"""A checkpoint object that was truncated or altered in the store (local and S3) fails the step that
reads it, with an error naming its key, and its bytes never reach a model or an offspring. The same
holds for every other stored object (records, manifests, the history, the frozen spec: each carries a
checksum), with one line saying how to recover; the derived ones (the history) are rebuilt where the
run reads them. Local commits are flushed to the disk unless ESGD_FSYNC=0."""

import pytest

from esgd.cli.worker import main as worker_main
from esgd.controller.runs import create_or_resume
from esgd.core import keys
from esgd.core.plan import Step
from esgd.core.records import BlobRef, Member, OffspringRecord, TrainRecord
from esgd.core.spec import parse_spec
from esgd.core.tables import rows, to_parquet
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


# Integrity of everything else stored (issue 13): records, manifests, history, the frozen spec -----


def altered_table(data: bytes) -> bytes:
    """The Parquet file with one fitness value changed and its metadata (checksum included) kept:
    it parses; only the checksum can tell."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(io.BytesIO(data))
    index = table.schema.get_field_index("fitness")
    values = table.column(index).to_pylist()
    values[0] += 0.25
    table = table.set_column(index, table.schema.field(index), pa.array(values, pa.float64()))
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def altered_record(data: bytes) -> bytes:
    """The JSON record with its fitness changed and its checksum kept."""
    import json

    raw = json.loads(data)
    raw["fitness"] += 0.25
    return json.dumps(raw, sort_keys=True).encode()


@pytest.mark.parametrize("how", ["truncated", "altered"])
def test_a_damaged_record_is_refused_naming_its_key_and_how_to_recover(run, how):
    from esgd.core.records import InitRecord

    key = keys.init_record(run.id, "init-001")
    good = run.store.get(key)
    run.store.put(key, good[:40] if how == "truncated" else altered_record(good))
    with pytest.raises(IntegrityError, match=f"{key} is damaged .*; restore it from a copy, or delete init/, gen-0000"):
        run.store.read(key, InitRecord)
    run.store.put(key, good)
    assert run.store.read(key, InitRecord).member == "init-001"


@pytest.mark.parametrize("how", ["truncated", "altered"])
def test_a_damaged_manifest_stops_the_step_with_one_line_naming_it(run, how, capsys):
    key = keys.parents(run.id, 0)
    good = run.store.get(key)
    run.store.put(key, good[:60] if how == "truncated" else altered_table(good))
    why = "not a readable Parquet file" if how == "truncated" else "checksum mismatch"
    with pytest.raises(IntegrityError, match=f"{key} is damaged \\({why}.*delete it and resume the run"):
        steps.run(Run(run.ref, "cpu"), Step("train", 0))
    assert worker_main(["train", "--run", run.uri, "--gen", "0", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"esgd-worker: error: {run.store.uri}/{key} is damaged") and "Traceback" not in err


def test_objects_written_before_checksums_still_read_unchecked(tmp_path):
    import io
    import json

    import pyarrow.parquet as pq

    from esgd.core.records import InitRecord, decode, to_dict
    from esgd.core.tables import CHECKSUM_KEY, read_table
    from esgd.store.local import LocalStore
    from esgd.store.run import frozen_spec

    record = InitRecord("init-000", BlobRef("runs/r/x.arrow", "ab" * 32, 10), 0.5)
    old = json.dumps({"schema": InitRecord.SCHEMA, **to_dict(record)}, sort_keys=True).encode()
    assert decode(InitRecord, old, "runs/r/init/init-000.json") == record
    table = read_table(to_parquet([Member("m", record.checkpoint, 0.5, "parent", 0, (), False, None)], Member), Member)
    metadata = {k: v for k, v in table.schema.metadata.items() if k != CHECKSUM_KEY}
    sink = io.BytesIO()
    pq.write_table(table.replace_schema_metadata(metadata), sink)
    assert rows(sink.getvalue(), Member)[0].member == "m"
    store = LocalStore(tmp_path)
    store.put("runs/old/spec.yaml", b"# frozen by esgd 0.0.1\nname: old\ntask: esgd.worker.tasks.digits:task\n")
    assert frozen_spec(store, "old").name == "old"


def test_a_damaged_frozen_spec_is_named_as_the_stored_one_not_the_users(store_uri, capsys):
    from esgd.cli.main import main
    from esgd.store.run import RunRef

    store = open_store(store_uri)
    ref, _ = create_or_resume(store, parse_spec(SPEC), "spec")
    key = keys.spec(ref.id)
    good = store.get(key)
    store.put(key, good.replace(b"mu: 4", b"mu: 5"))  # still a valid spec: only the checksum tells
    with pytest.raises(IntegrityError, match=f"{key} is damaged \\(checksum mismatch"):
        RunRef.open(ref.uri)
    store.put(key, good[: len(good) // 2] + b"\x00\xff: [")  # torn: neither UTF-8 nor YAML
    assert main(["report", ref.uri, "--json"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"esgd: error: {store.uri}/{key} is damaged")
    assert "restore it from a copy, or delete it and run `esgd run` again" in err[0]


def test_a_torn_parents_manifest_says_how_to_go_on_and_going_on_ends_as_undisturbed(tmp_path, capsys):
    """The issue's case: a run stopped after two generations, gen-0002/parents.parquet torn
    (truncate -s 60). `esgd run` stops with one line naming it and how to recover; done so, the
    run ends with the history of a run never disturbed."""

    from helpers import execute, history, run_cli, start, write_spec

    data, store = small(name="torn", generations=3), str(tmp_path / "store")
    whole = start(store, data, "whole")
    execute(whole)
    run = start(store, data, "torn")
    run_generations(run, 2)
    key = keys.parents(run.id, 2)
    path = tmp_path / "store" / key
    path.write_bytes(path.read_bytes()[:60])
    spec_file = write_spec(tmp_path / "spec.yaml", data)
    code, _, err = run_cli(capsys, "run", spec_file, "--store", store, "--run-id", "torn")
    last = err.strip().splitlines()[-1]
    assert code == 2 and "Traceback" not in err
    assert last.startswith(f"esgd: error: {run.store.uri}/{key} is damaged (not a readable Parquet file")
    assert "delete it and resume the run: generation 1's select step writes it again" in last
    path.unlink()
    code, _, _ = run_cli(capsys, "run", spec_file, "--store", store, "--run-id", "torn")
    assert code == 0 and history(run.uri) == history(whole.uri)


@pytest.mark.parametrize("damage", ["history.parquet", "and a part"])
def test_a_damaged_history_is_rebuilt_where_the_run_reads_it(store_uri, damage, caplog):
    """history.parquet torn (as the newest objects may be by an OS crash without fsync), and a
    committed generation's history part altered: the next select merges the history again and makes
    the part again from its generation's records, says so, and the run ends with the history (and
    the part) of a run never disturbed. (An intact history.parquet is merged further without reading
    the parts it holds: `esgd verify` finds a damaged part then.)"""
    from esgd.core.records import HistoryRow
    from esgd.core.tables import read_table

    from helpers import execute, history, start

    data = small(name="hist", generations=3)
    whole = start(store_uri, data, "whole")
    execute(whole)
    run = start(store_uri, data, "hist")
    run_generations(run, 2)
    merged, part = keys.history(run.id), keys.history_part(run.id, 0)
    run.store.put(merged, run.store.get(merged)[:60])
    if damage == "and a part":
        run.store.put(part, altered_table(run.store.get(part)))
    execute(run)
    assert history(run.uri) == history(whole.uri)
    assert (
        read_table(run.store.get(part), HistoryRow).to_pylist()
        == read_table(whole.store.get(keys.history_part(whole.id, 0)), HistoryRow).to_pylist()
    )
    said = caplog.text  # on stderr, unless logging is configured
    assert f"{run.store.uri}/{merged} was damaged (not a readable Parquet file" in said
    assert "merging it again from the history parts" in said
    if damage == "and a part":
        assert f"{run.store.uri}/{part} was damaged (checksum mismatch" in said
        assert "made again from the records of its generation" in said


def test_local_commits_are_flushed_to_the_disk_unless_ESGD_FSYNC_is_0(tmp_path, monkeypatch):
    import os

    from esgd.store import local
    from esgd.store.base import StoreError

    synced = []
    real = os.fsync

    def fsync(fd):
        synced.append(os.path.realpath(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(local.os, "fsync", fsync)
    root = os.path.realpath(tmp_path / "s")
    store = local.LocalStore(root)
    assert store.put_if_absent("runs/r/gen-0000/train/m.json", b"{}")
    folder = f"{root}/runs/r/gen-0000/train"
    assert any(p.startswith(f"{folder}/.tmp-") for p in synced)  # the file, before it is linked into place
    assert synced[-1] == folder  # then its folder: the link itself
    assert {f"{root}/runs/r", f"{root}/runs/r/gen-0000"} <= set(synced)  # and the new folders' entries
    synced.clear()
    store.put("runs/r/gen-0000/train/m.a.arrow", b"x")
    store.write_stream("runs/r/gen-0000/train/m.b.arrow", [b"x", b"y"])
    assert len(synced) == 4 and synced[1] == synced[3] == folder
    synced.clear()
    monkeypatch.setenv("ESGD_FSYNC", "0")
    quick = local.LocalStore(root)
    assert quick.put_if_absent("runs/r/gen-0001/x.json", b"{}")
    quick.put("runs/r/gen-0001/y.arrow", b"x")
    assert synced == [] and quick.get("runs/r/gen-0001/x.json") == b"{}"
    monkeypatch.setenv("ESGD_FSYNC", "sometimes")
    with pytest.raises(StoreError, match="ESGD_FSYNC='sometimes': expected 1"):
        open_store(root)


def test_no_damage_to_a_table_goes_unnoticed_or_escapes_as_another_error():
    """Bytes flipped all over a manifest, or the file cut anywhere: every read either fails with
    Damaged (one line naming the key) or returns exactly the rows written (a byte the values do not
    depend on, such as a page's statistics); never other rows, never a raw pyarrow error."""
    from esgd.core.hparams import HParams
    from esgd.core.records import Damaged

    members = [
        Member(
            f"m{i}", BlobRef(f"runs/r/x{i}.arrow", "ab" * 32, 100 + i), 0.5 + i, "parent", 0, ("a",), i % 2 == 0, None
        )
        for i in range(4)
    ]
    members[1] = Member(
        "m1", members[1].checkpoint, 1.5, "offspring", 1, ("a", "b"), False, HParams("adam", 1e-3, 0, 0, 0.9, 0.999, 32)
    )
    data = to_parquet(members, Member)
    damaged = [data[:n] for n in range(0, len(data), 7)]
    damaged += [data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1 :] for i in range(0, len(data), 3)]
    unchanged = 0
    for bad in damaged:
        try:
            assert rows(bad, Member, "runs/r/gen-0001/parents.parquet") == members
            unchanged += 1
        except Damaged as error:
            assert str(error).startswith("runs/r/gen-0001/parents.parquet is damaged (")
    assert unchanged < len(damaged) / 2


def run_generations(run, count: int) -> None:
    """The first `count` generations of the run, step by step in this process (a run then stopped)."""
    from esgd.core.plan import phases

    for phase in phases(run.spec, run.spec.mu, run.spec.population.offspring)[:count]:
        for step in phase.steps():
            steps.run(run, step)


def test_a_frozen_spec_torn_to_its_header_or_stripped_of_its_checksum_is_damaged(tmp_path):
    """A frozen spec cut to its header comments (or to nothing) would load as the default spec,
    and one without its checksum line as an older run's: both are damaged once the run has
    checksummed records, and an empty one always."""
    from esgd.core.plan import Step
    from esgd.store.run import CHECKSUM, RunRef

    from helpers import start

    run = start(str(tmp_path / "store"), small(name="cut"), "cut")
    store, key = run.ref.store, keys.spec("cut")
    good = store.get(key).decode()
    store.put(key, b"")
    with pytest.raises(IntegrityError, match="empty: torn"):
        RunRef.open(run.ref.uri)
    steps.run(run, Step("init"))
    header = "".join(line for line in good.splitlines(keepends=True) if line.startswith("#"))
    store.put(key, header.replace(CHECKSUM, "# ").encode())
    with pytest.raises(IntegrityError, match="empty: torn"):
        RunRef.open(run.ref.uri)
    store.put(key, header.encode())  # its checksum line is in the header: the empty rest mismatches
    with pytest.raises(IntegrityError, match="is damaged \\(checksum mismatch"):
        RunRef.open(run.ref.uri)
    stripped = "".join(line for line in good.splitlines(keepends=True) if not line.startswith(CHECKSUM))
    store.put(key, stripped.replace("mu: 4", "mu: 5").encode())
    with pytest.raises(IntegrityError, match="its checksum line is missing"):
        RunRef.open(run.ref.uri)
    store.put(key, good.encode())
    assert RunRef.open(run.ref.uri).spec.mu == 4
