"""Bad input: one clear line naming what is wrong, exit code 2, nothing written."""

import datetime

import pytest
import yaml

from esgd.cli.main import main
from esgd.store.uri import open_store

from helpers import tiny, write_spec

CASES = {
    "elite-above-mu": ({"population": {"mu": 4, "elite": 5}}, "population.elite"),
    "rho-above-mu": ({"population": {"mu": 4, "rho": 5, "elite": 2}}, "population.rho"),
    "negative-sigma": ({"evolution": {"sigma": {"start": -0.1, "kind": "constant"}}}, "evolution.sigma.start"),
    "negative-lr": ({"sgd": {"optimizers": {"sgd": {"lr": [-0.1, 0.1]}}}}, "sgd.optimizers.sgd.lr"),
    "zero-lr-single": ({"single": {"lr": 0}}, "single.lr"),
    "unknown-optimizer": ({"sgd": {"optimizers": {"lion": {"lr": [0.1, 0.2]}}}}, "sgd.optimizers.lion"),
    "unknown-field": ({"population": {"muu": 3}}, "population.muu"),
    "unknown-mode": ({"mode": "evolve"}, "mode"),
    "module-does-not-exist": ({"task": "no_such_package.tasks:task"}, "no_such_package"),
    "function-does-not-exist": ({"task": "esgd.worker.tasks.digits:nope"}, "nope"),
    "not-an-import-path": ({"task": "esgd.worker.tasks.digits"}, "task"),
    "missing-data-file": (
        {"task": "esgd.worker.tasks.tabular:task", "task_args": {"path": "/nonexistent/data.parquet"}},
        "/nonexistent/data.parquet",
    ),
    "bad-task-args": ({"task_args": {"hiddn": 3}}, "hiddn"),
    "missing-init-checkpoint": (
        {"population": {"init": {"checkpoint": "/nonexistent/x.arrow"}}},
        "population.init.checkpoint",
    ),
    "unknown-device": ({"device": "tpu"}, "device"),
    "absent-gpu": ({"device": "cuda:3"}, "device: cuda:3"),
    "task-arg-of-the-wrong-type": ({"task_args": {"hidden": "abc"}}, "task"),
    "task-args-not-plain-values": ({"task_args": {"when": datetime.date(2024, 1, 1)}}, "task_args"),
}


def _run(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def _assert_one_line_and_nothing_written(code, out, err, needle, store_uri):
    assert code == 2
    lines = err.strip().splitlines()
    if len(lines) == 2:  # found after the run's first line: only that line before the error
        assert lines[0].startswith("run ") and ": loading torch and the task " in lines[0], err
        lines = lines[1:]
    assert len(lines) == 1 and lines[0].startswith("esgd: error: "), err
    assert needle in lines[0], lines[0]
    assert out == ""
    assert open_store(store_uri).list("runs") == []


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_spec(case, store_uri, tmp_path, capsys):
    extra, needle = CASES[case]
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(tiny(**extra)))
    _assert_one_line_and_nothing_written(*_run(capsys, "run", str(spec_file), "--store", store_uri), needle, store_uri)


def test_bad_override(store_uri, tmp_path, capsys):
    spec_file = write_spec(tmp_path / "spec.yaml", tiny())
    result = _run(capsys, "run", spec_file, "--store", store_uri, "--set", "population.elite=9")
    _assert_one_line_and_nothing_written(*result, "population.elite", store_uri)
    result = _run(capsys, "run", spec_file, "--store", store_uri, "--set", "population.mu")
    _assert_one_line_and_nothing_written(*result, "key=value", store_uri)


def test_missing_spec_file(store_uri, tmp_path, capsys):
    result = _run(capsys, "run", str(tmp_path / "nope.yaml"), "--store", store_uri)
    _assert_one_line_and_nothing_written(*result, "nope.yaml", store_uri)


def test_store_that_cannot_be_written(tmp_path, capsys):
    spec_file = write_spec(tmp_path / "spec.yaml", tiny())
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    code, out, err = _run(capsys, "run", spec_file, "--store", str(blocker / "store"))
    assert code == 2 and len(err.strip().splitlines()) == 1 and "cannot be written" in err
    assert blocker.read_text() == "not a directory"


def test_unknown_store_scheme(tmp_path, capsys):
    spec_file = write_spec(tmp_path / "spec.yaml", tiny())
    code, out, err = _run(capsys, "run", spec_file, "--store", "gs://bucket/x")
    assert code == 2 and "unsupported store URI" in err


def test_resuming_with_a_different_spec_is_refused(store_uri, tmp_path, capsys):
    spec_file = write_spec(tmp_path / "spec.yaml", tiny(generations=1))
    assert _run(capsys, "run", spec_file, "--store", store_uri, "--run-id", "r")[0] == 0
    before = open_store(store_uri).list("runs")
    code, out, err = _run(capsys, "run", spec_file, "--store", store_uri, "--run-id", "r", "--set", "seed=99")
    assert code == 2 and "different spec (seed)" in err
    assert open_store(store_uri).list("runs") == before


def test_worker_rejects_bad_ranges(store_uri, tmp_path, capsys):
    from esgd.cli.worker import main as worker

    spec_file = write_spec(tmp_path / "spec.yaml", tiny(generations=1))
    code, uri, _ = _run(capsys, "run", spec_file, "--store", store_uri)
    assert worker(["train", "--run", uri.strip(), "--gen", "5"]) == 2
    assert "--gen 5" in capsys.readouterr().err
    assert worker(["train", "--run", uri.strip(), "--gen", "0", "--members", "0..9"]) == 2
    assert "outside the population" in capsys.readouterr().err
    assert worker(["train", "--run", uri.strip(), "--gen", "zero"]) == 2
    assert capsys.readouterr().err == "esgd-worker: error: --gen: expected a whole number, got 'zero'\n"
    assert worker(["evaluate", "--run", uri.strip(), "--gen", "0", "--offspring", "3..1"]) == 2
    assert "--offspring: expected a range a..b with a <= b, got '3..1'" in capsys.readouterr().err


def test_a_run_that_cannot_go_on_is_one_line_and_exit_2(capsys):
    from esgd.cli.options import run_main
    from esgd.core.errors import RunStopped

    def stops():
        raise RunStopped("generation 3 failed 1 time(s); last: esgd-worker train ... exited with code 1")

    assert run_main("esgd", stops) == 2
    assert (
        capsys.readouterr().err
        == "esgd: run stopped: generation 3 failed 1 time(s); last: esgd-worker train ... exited with code 1\n"
    )


@pytest.mark.parametrize("field", ["population.init.checkpoint", "reference.checkpoint"])
@pytest.mark.parametrize("content", ["not-a-checkpoint", "another-architecture"])
def test_checkpoints_that_do_not_fit_the_model(field, content, store_uri, tmp_path, capsys):
    from esgd.store import checkpoint
    from esgd.worker.tasks.mlp import mlp
    from esgd.worker.weights import to_checkpoint

    path = tmp_path / "model.arrow"
    path.write_bytes(
        b"junk" * 100 if content == "not-a-checkpoint" else checkpoint.encode(*to_checkpoint(mlp(3, 3, 1, 2)))
    )
    extra = (
        {"population": {"init": {"checkpoint": str(path)}}}
        if field.startswith("population")
        else {"reference": {"checkpoint": str(path)}}
    )
    spec_file = write_spec(tmp_path / "spec.yaml", tiny(**extra))
    _assert_one_line_and_nothing_written(*_run(capsys, "run", spec_file, "--store", store_uri), field, store_uri)


def test_bad_device_flag(store_uri, tmp_path, capsys):
    spec_file = write_spec(tmp_path / "spec.yaml", tiny())
    _assert_one_line_and_nothing_written(
        *_run(capsys, "run", spec_file, "--store", store_uri, "--device", "foo"), "device", store_uri
    )


def test_an_output_path_that_cannot_be_written(tmp_path, capsys):
    spec_file = write_spec(tmp_path / "spec.yaml", tiny())
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    code, out, err = _run(
        capsys,
        "compile",
        spec_file,
        "--generation",
        "0",
        "--store",
        str(tmp_path / "st"),
        "-o",
        str(blocker / "wf.yaml"),
    )
    errors = [line for line in err.splitlines() if line.startswith("esgd: error:")]
    assert code == 2 and len(errors) == 1 and str(blocker / "wf.yaml") in errors[0] and out == ""


def test_a_store_that_cannot_be_reached_is_not_a_bad_checkpoint(monkeypatch):
    """The task check reads the checkpoints a spec names; an outage of their store is transient
    trouble (exit 75, retried), not a spec error (exit 2, never retried)."""
    from esgd.core.spec import parse_spec
    from esgd.store.base import StoreUnavailable
    from esgd.worker import preflight
    from esgd.worker.task import load_task

    def unreachable(path):
        raise StoreUnavailable("cannot reach the S3 endpoint http://minio:9000: connection failed")

    spec = parse_spec(tiny(reference={"checkpoint": "s3://bucket/runs/r/final/best.arrow"}))
    monkeypatch.setattr(preflight, "read_uri", unreachable)
    with pytest.raises(StoreUnavailable):
        preflight.check(spec, load_task(spec.task, spec.task_args))
