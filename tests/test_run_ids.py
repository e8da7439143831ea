"""Run ids (issue 13, item 3, and 9b): checked once (esgd.core.keys.check_run_id) by every command
that takes --run-id, before anything is written; a run that exists with another spec is refused
with a free id suggested in the form of the command used (`make demo RUN_ID=...` for make demo)."""

import shutil
import subprocess
from pathlib import Path

import pytest

from esgd.controller.runs import frozen_text
from esgd.core import keys
from esgd.core.errors import InputError
from esgd.core.spec import parse_spec
from esgd.store.uri import open_store

from helpers import merge, run_cli, small, write_spec

ROOT = Path(__file__).resolve().parents[1]
BAD = ["a/b", "/abs/x", ".", "..", "x" * 300, "a b", "é", "", "-a", "run\n", "a%2Fb"]


@pytest.mark.parametrize("run_id", BAD)
def test_an_invalid_run_id_is_refused(run_id):
    with pytest.raises(InputError, match=r"^--run-id .*: a run id is 1 to 128 ASCII letters, digits"):
        keys.check_run_id(run_id)


def test_valid_run_ids():
    for run_id in ("demo", "demo-esgd", "A.b_c-1", "0", "x" * 128, "tiny-1a2b3c4d"):
        assert keys.check_run_id(run_id) == run_id
    with pytest.raises(InputError, match=r"\(129 characters\)"):
        keys.check_run_id("x" * 129)


def commands(spec: str, store: str, run_id: str) -> dict[str, list[str]]:
    return {
        "run": ["run", spec, "--store", store, "--run-id", run_id, "--device", "cpu"],
        "compare": ["compare", spec, "--store", store, "--run-id", run_id, "--device", "cpu", "--out", store + "-out"],
        "controller": ["controller", spec, "--store", store, "--run-id", run_id],
        "compile": ["compile", spec, "--store", "s3://bucket/x", "--run-id", run_id],
    }


@pytest.mark.parametrize("command", ["run", "compare", "controller", "compile"])
@pytest.mark.parametrize("run_id", ["a/b", "/abs/x", ".", "x" * 300, "a b", "é"])
def test_every_command_refuses_an_invalid_run_id_in_one_line_writing_nothing(tmp_path, capsys, command, run_id):
    spec = write_spec(tmp_path / "spec.yaml", small())
    store = tmp_path / "store"
    code, out, err = run_cli(capsys, *commands(spec, str(store), run_id)[command])
    assert code == 2 and out == ""
    errors = [line for line in err.splitlines() if "error" in line]
    assert len(errors) == 1 and errors[0].startswith("esgd: error: --run-id ") and "Traceback" not in err
    assert not store.exists() and not Path(str(store) + "-out").exists()


def test_compare_refuses_a_base_id_whose_mode_ids_are_too_long(tmp_path, capsys):
    spec = write_spec(tmp_path / "spec.yaml", small())
    store = tmp_path / "store"
    code, _, err = run_cli(capsys, "compare", spec, "--store", str(store), "--run-id", "b" * 120)
    assert code == 2 and err.splitlines()[-1] == (
        "esgd: error: --run-id: 120 characters, too long for the runs it names (131 with -population; "
        "a run id has at most 128)"
    )
    assert not store.exists()


def frozen(store, run_id: str, data: dict) -> None:
    store.put_if_absent(keys.spec(run_id), frozen_text(parse_spec(data)).encode())


@pytest.mark.parametrize(
    ("hint", "suggested"), [(None, "--run-id demo-2"), ("make demo RUN_ID={}", "make demo RUN_ID=demo-2")]
)
def test_compare_refuses_runs_with_another_spec_before_any_run_suggesting_a_free_id(
    tmp_path, capsys, monkeypatch, hint, suggested
):
    """`make demo` after an edit of the example: the population run exists with the old spec. Said
    before any run starts (the esgd run would have come second), with what works for make demo."""
    if hint:
        monkeypatch.setenv("ESGD_RUN_ID_HINT", hint)
    data = small()
    spec = write_spec(tmp_path / "spec.yaml", data)
    store = open_store(str(tmp_path / "store"))
    frozen(store, "demo-population", merge(data, {"mode": "population", "sgd": {"epochs": 3}}))
    before = store.list(keys.RUNS)
    code, out, err = run_cli(
        capsys, "compare", spec, "--store", store.uri, "--run-id", "demo", "--modes", "esgd,population"
    )
    assert code == 2 and out == ""
    assert err.strip().splitlines()[-1] == (
        "esgd: error: run demo-population exists with a different spec (sgd); only a raised `generations` "
        f"continues an existing run: to start a new run with this spec, give it another id: {suggested}"
    )
    assert store.list(keys.RUNS) == before  # no esgd run either


def test_the_suggested_id_is_free_for_every_run_of_the_command(tmp_path):
    from esgd.controller.runs import free_run_id

    store = open_store(str(tmp_path))
    frozen(store, "demo-2-esgd", small())
    frozen(store, "demo-3-population", small())
    assert free_run_id(store, "demo", ("-population", "-esgd")) == "demo-4"
    assert free_run_id(store, "demo-4", ("-esgd",)) == "demo-5"
    assert free_run_id(store, "demo") == "demo-2"


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
def test_make_demo_takes_a_run_id_and_tells_esgd_how_to_suggest_one():
    out = subprocess.run(
        ["make", "-n", "demo", "RUN_ID=demo-2", "VENV=/nonexistent"], cwd=ROOT, capture_output=True, text=True
    ).stdout
    assert "ESGD_RUN_ID_HINT='make demo RUN_ID={}'" in out and "--run-id demo-2 " in out
    assert "/runs/demo-2-esgd " in out


@pytest.mark.parametrize("command", ["report", "lineage", "verify"])
def test_a_run_uri_with_an_invalid_run_id_is_one_line(tmp_path, capsys, command):
    code, _, err = run_cli(capsys, command, f"{tmp_path}/runs/a b")
    assert code == 2 and err.startswith("esgd: error: run URI ") and "a run id is 1 to 128 ASCII" in err, err
    assert len(err.strip().splitlines()) == 1
