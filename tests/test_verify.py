"""`esgd verify RUN [--repair]`: every object of a run checked; derived files (history parts,
history.parquet) rebuilt from the records that committed them, the same rows; anything else damaged
or missing is one line saying how to recover, and following it ends with the history of a run never
disturbed. Exit code 0 when healthy or repaired, 2 otherwise."""

import json
import shutil
import subprocess
import sys

import pytest

from esgd.core import keys
from esgd.core.records import FinalSummary, HistoryRow
from esgd.core.tables import read_table, to_parquet
from esgd.store import history as stored
from esgd.store.uri import open_run

from helpers import execute, history, run_cli, small, start, write_spec

DATA = small(name="verify", generations=3, finetune={"epochs": 1})


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> str:
    """A local store holding one finished run, `whole`, never disturbed (copied by each test)."""
    store = tmp_path_factory.mktemp("verify") / "store"
    execute(start(str(store), DATA, "whole"))
    return str(store)


@pytest.fixture
def run(finished, tmp_path) -> str:
    """The URI of a copy of the finished run, in a store of its own, to damage (the same id: records
    name their checkpoints by key)."""
    shutil.copytree(finished, tmp_path / "store")
    return str(tmp_path / "store" / "runs" / "whole")


def verify(capsys, *args) -> tuple[int, list[str]]:
    code, out, err = run_cli(capsys, "verify", *args)
    assert "Traceback" not in err
    return code, out.splitlines()


def rows(uri: str, key: str) -> list[dict]:
    store, _ = open_run(uri)
    return read_table(store.get(key), HistoryRow).to_pylist()


def test_a_healthy_run_verifies(run, finished, capsys):
    code, lines = verify(capsys, run)
    assert code == 0 and len(lines) == 1
    assert lines[0].startswith(
        f"run {open_run(run)[0].uri}/runs/whole: 3 of 3 generations committed, finished; checked"
    )
    assert lines[0].endswith(": healthy")
    for what in ("1 spec", "records", "manifests", "checkpoints", "5 history files"):
        assert what in lines[0]


def test_torn_or_missing_derived_files_are_rebuilt_with_repair(run, finished, capsys):
    store, run_id = open_run(run)
    part, merged, gone = keys.history_part(run_id, 1), keys.history(run_id), keys.history_part(run_id, 3)
    before = {key: rows(run, key) for key in (part, merged, gone)}
    store.put(part, store.get(part)[:60])
    store.put(merged, store.get(merged)[:60])
    (open_run(run)[0].root / gone).unlink()  # the fine-tuning rows
    code, lines = verify(capsys, run)
    assert code == 2 and len(lines) == 4 and lines[-1].endswith("3 problem(s), each above with how to recover")
    assert f"{store.uri}/{part} is damaged (not a readable Parquet file: torn or altered); it is derived" in lines[0]
    assert f"`esgd verify {run_uri(run)} --repair` rebuilds it" in lines[0]
    assert any(line.startswith(f"{store.uri}/{gone} is missing; it is derived") for line in lines)
    code, lines = verify(capsys, run, "--repair")
    assert code == 0 and lines[-1].endswith("healthy after 3 repair(s)")
    assert f"rebuilt {store.uri}/{part} from the records of its generation (it was damaged: not a readable" in lines[0]
    assert {key: rows(run, key) for key in before} == before
    assert verify(capsys, run)[0] == 0


def run_uri(uri: str) -> str:
    store, run_id = open_run(uri)
    return f"{store.uri}/runs/{run_id}"


@pytest.mark.parametrize(
    "extra",
    [
        {"evolution": {"rounds": 2}, "finetune": {"epochs": 1}},
        {"mode": "population"},
        {"mode": "no-evolution"},
        {"mode": "single", "single": {"optimizer": "sgd", "lr": 0.1, "momentum": 0.0}},
    ],
    ids=["esgd-2-rounds-finetune", "population", "no-evolution", "single"],
)
def test_parts_made_again_from_the_records_are_those_the_steps_wrote(tmp_path, extra):
    run = start(str(tmp_path / "store"), small(name="modes", generations=2, **extra), "m")
    execute(run)
    generations = [0, 1] + ([2] if run.spec.finetune.epochs else [])
    for generation in generations:
        key = keys.history_part(run.id, generation)
        made = stored.part_rows(run.store, run.id, run.spec, generation)
        assert [r.member for r in made] and read_table(run.store.get(key), HistoryRow).to_pylist() == read_table(
            to_parquet(made, HistoryRow), HistoryRow
        ).to_pylist()


def test_a_reference_models_rows_are_made_again_too(tmp_path):
    base = start(str(tmp_path / "store"), small(name="base", generations=1), "base")
    execute(base)
    best = base.store.read(keys.final_summary(base.id), FinalSummary)
    checkpoint_file = tmp_path / "best.arrow"
    checkpoint_file.write_bytes(base.blobs.get(best.checkpoint))
    run = start(str(tmp_path / "store"), small(name="ref", reference={"checkpoint": str(checkpoint_file)}), "ref")
    execute(run)
    for generation in (0, 1):
        key = keys.history_part(run.id, generation)
        made = stored.part_rows(run.store, run.id, run.spec, generation)
        assert any(r.role == "reference" for r in made)
        assert (
            read_table(run.store.get(key), HistoryRow).to_pylist()
            == read_table(to_parquet(made, HistoryRow), HistoryRow).to_pylist()
        )


def spec_file(tmp_path) -> str:
    return write_spec(tmp_path / "spec.yaml", DATA)


def test_a_torn_parents_manifest_is_a_problem_that_says_how_to_go_on(run, finished, tmp_path, capsys):
    store, run_id = open_run(run)
    key = keys.parents(run_id, 2)
    store.put(key, store.get(key)[:60])
    code, lines = verify(capsys, run, "--repair")  # not derived: nothing to rebuild
    assert code == 2
    assert lines[0] == (
        f"{store.uri}/{key} is damaged (not a readable Parquet file: torn or altered); delete it and resume the run: "
        "generation 1's select step writes it again from the committed records"
    )
    (store.root / key).unlink()
    code, _, _ = run_cli(capsys, "run", spec_file(tmp_path), "--store", str(store.root), "--run-id", "whole")
    assert code == 0 and verify(capsys, run)[0] == 0
    assert history(run) == history(f"{finished}/runs/whole")


def test_a_damaged_record_of_a_committed_generation_says_how_to_rewind(run, finished, tmp_path, capsys):
    store, run_id = open_run(run)
    key = keys.fitness_record(run_id, 1, 0, keys.member_id(1, 0, 2))
    raw = json.loads(store.get(key))
    raw["fitness"] = 0.0  # parses, valid: only its checksum tells
    store.put(key, json.dumps(raw).encode())
    missing = keys.train_record(run_id, 0, "init-001")
    (store.root / missing).unlink()
    code, lines = verify(capsys, run)
    assert code == 2 and lines[-1].endswith("2 problem(s), each above with how to recover")
    assert lines[0].startswith(f"{store.uri}/{key} is damaged (checksum mismatch: altered since it was written)")
    assert lines[1].startswith(f"{store.uri}/{missing} is missing: generation 0's history part cannot be made again")
    rewind = (
        "delete gen-0001 and every later gen-*, history/gen-0001.parquet and every later history part, and final/, "
        "then resume the run: it runs again from generation 1"
    )
    assert lines[0].endswith(f"restore it from a copy, or {rewind}")
    for gone in ("gen-0000", "gen-0001", "gen-0002", "gen-0003", "final"):  # rewound to generation 0: both
        shutil.rmtree(store.root / "runs" / run_id / gone)
    for generation in (0, 1, 2, 3):
        (store.root / keys.history_part(run_id, generation)).unlink()
    code, _, _ = run_cli(capsys, "run", spec_file(tmp_path), "--store", str(store.root), "--run-id", "whole")
    assert code == 0 and verify(capsys, run)[0] == 0
    assert history(run) == history(f"{finished}/runs/whole")


def test_a_damaged_final_checkpoint_is_found(run, capsys):
    store, run_id = open_run(run)
    final = store.read(keys.final_summary(run_id), FinalSummary)
    store.put(final.checkpoint.key, store.get(final.checkpoint.key)[:100])
    code, lines = verify(capsys, run, "--repair")
    assert code == 2
    assert lines[0].startswith(
        f"the final checkpoint (of the run's best member {final.best_member}): checksum mismatch for "
        f"{final.checkpoint.key}: the object is truncated (100 of {final.checkpoint.size} B); "
        "delete final/ and resume the run: fine-tuning and the finish step run again"
    )


def test_a_damaged_spec_or_summary_and_orphaned_checkpoints(run, capsys):
    store, run_id = open_run(run)
    store.put(f"{keys.gen(run_id, 0)}/train/init-000.0123456789ab.arrow", b"a failed attempt's")  # never read
    store.put(keys.history_part(run_id, 7), b"torn")  # a part of no committed generation: resuming writes it
    code, lines = verify(capsys, run)
    assert code == 0 and lines[-1].endswith("1 checkpoint(s) of failed attempts, never read, not checked: healthy")
    assert lines[0] == (
        f"{store.uri}/{keys.history_part(run_id, 7)} is damaged (not a readable Parquet file: torn or altered); "
        "nothing to do (generation 7 is not committed: resuming the run writes it again)"
    )
    (store.root / keys.final_summary(run_id)).unlink()
    spec = store.get(keys.spec(run_id))
    store.put(keys.spec(run_id), spec.replace(b"mu: 4", b"mu: 8"))
    code, lines = verify(capsys, run)
    assert code == 2
    assert lines[0].startswith(f"{store.uri}/{keys.spec(run_id)} is damaged (checksum mismatch")
    store.put(keys.spec(run_id), spec)
    code, lines = verify(capsys, run)
    assert code == 2 and lines[1] == (
        f"{store.uri}/{keys.final_summary(run_id)} is missing though final/manifest.parquet commits the final "
        "stages; delete it and final/manifest.parquet, then resume the run: the finish step writes both again"
    )


def test_no_such_run_and_a_bad_fsync_setting_are_one_line(tmp_path, capsys, monkeypatch):
    code, out, err = run_cli(capsys, "verify", str(tmp_path / "runs" / "nope"))
    assert (
        code == 2
        and out == ""
        and err
        == f"esgd: error: no run at {(tmp_path / 'runs' / 'nope').as_uri()} (`esgd run` prints the URI of each run)\n"
    )
    monkeypatch.setenv("ESGD_FSYNC", "2")
    code, _, err = run_cli(capsys, "verify", str(tmp_path / "runs" / "nope"))
    assert code == 2 and err.startswith("esgd: error: ESGD_FSYNC='2': expected 1") and len(err.splitlines()) == 1


def test_verify_on_s3_too(store_uri, capsys):
    """Both backends: a torn part found, then rebuilt."""
    run = start(store_uri, small(name="s3", generations=1), "v")
    execute(run)
    key = keys.history_part(run.id, 0)
    before = rows(run.uri, key)
    run.store.put(key, run.store.get(key)[:60])
    assert verify(capsys, run.uri)[0] == 2
    assert verify(capsys, run.uri, "--repair")[0] == 0 and rows(run.uri, key) == before


def test_verify_loads_neither_torch_nor_the_task():
    code = "import sys, esgd.cli.verify, esgd.analysis.verify; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_report_merges_a_missing_or_torn_history_again(run, capsys):
    """A finished run whose history.parquet is gone or torn: `esgd report` merges it again from
    the history parts (saying so) instead of calling the run unstarted or stopping."""
    store, run_id = open_run(run)
    key = keys.history(run_id)
    whole = store.get(key)
    for damage in (lambda: store.delete(key), lambda: store.put(key, whole[:60])):
        damage()
        code, _, err = run_cli(capsys, "report", run, "--json")
        assert code == 0 and "no committed generation" not in err, err
        assert read_table(store.get(key), HistoryRow, key) == read_table(whole, HistoryRow, key)
