"""The Python API (issue 15): the same engine as the command line, from Python. Its docstrings'
examples run here as doctests; a tiny run goes through run(), history(), best(), report(), and a
task given as a function runs here and is refused for a cluster with one clear line."""

import doctest
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest
import torch

import esgd
from esgd.core.errors import InputError
from esgd.worker.tasks.digits import task as digits_task

from helpers import history, run_cli, tiny, write_spec

ROOT = Path(__file__).resolve().parents[1]
SPEC = tiny(generations=2, population={"mu": 3, "offspring": 2, "elite": 2}, sgd={"epochs": 1, "batch_size": [64]})


def test_the_docstrings_examples_run(monkeypatch):
    monkeypatch.chdir(ROOT)  # they name examples/ as a user in the repository does
    failed, tried = doctest.testmod(esgd, optionflags=doctest.ELLIPSIS)
    assert tried >= 4 and failed == 0


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    store = tmp_path_factory.mktemp("api")
    lines: list[str] = []
    run = esgd.run(SPEC, store=str(store), run_id="api", device="cpu", progress=lines.append)
    return run, lines, store


def test_run_is_the_command_lines_run(finished, tmp_path, capsys):
    """The same history as `esgd run` of the same spec, and the same progress lines."""
    run, lines, _ = finished
    assert lines[0] == f"run {run.uri}: loading torch and the task {SPEC['task']} …"
    assert lines[-1] == "run api is complete" and sum(line.startswith("gen ") for line in lines) == 2
    spec = write_spec(tmp_path / "s.yaml", SPEC)
    code, out, err = run_cli(capsys, "run", spec, "--store", str(tmp_path), "--run-id", "api")
    assert code == 0 and history(out) == history(run.uri)


def test_a_run_opened_again_answers_from_the_store(finished, tmp_path):
    run, _, _ = finished
    again = esgd.open_run(run.uri)
    table = again.history()
    assert isinstance(table, pa.Table) and table.to_pylist() == history(run.uri)
    assert [s["generation"] for s in again.summaries()] == [0, 1]
    final = again.final()
    model = again.best()
    assert isinstance(model, torch.nn.Module)
    x, y = digits_task(**SPEC["task_args"]).fitness
    model.eval()
    with torch.no_grad():
        loss = torch.nn.functional.cross_entropy(model(x), y).item()
    assert loss == pytest.approx(final.best_fitness, rel=1e-5)  # the winner's weights, in the task's model
    paths = again.report(tmp_path / "report")
    assert paths and all(p.exists() and p.suffix == ".png" for p in paths)


def test_running_again_resumes_and_a_changed_spec_is_refused(finished):
    run, _, store = finished
    lines: list[str] = []
    assert esgd.run(SPEC, store=str(store), run_id="api", progress=lines.append).uri == run.uri
    assert any(line.startswith(f"resuming {run.uri}") for line in lines)
    with pytest.raises(InputError, match="different spec"):
        esgd.run({**SPEC, "seed": 99}, store=str(store), run_id="api", progress=lines.append)


def test_progress_none_is_silent(finished, capsys):
    run, _, store = finished
    capsys.readouterr()
    assert esgd.run(SPEC, store=str(store), run_id="api", progress=None).uri == run.uri
    assert capsys.readouterr() == ("", "")


def test_specs_are_built_in_python_and_validated():
    spec = esgd.Spec(name="py", task="esgd.worker.tasks.digits:task", generations=3)
    assert spec.generations == 3 and spec.mode == "esgd"
    with pytest.raises(ValueError, match="generations"):
        esgd.Spec(name="py", task="esgd.worker.tasks.digits:task", generations=0)


def my_task(hidden: int = 8):
    """A task defined in a test module, passed as a function."""
    return digits_task(hidden=hidden)


def test_a_task_function_runs_here_and_is_refused_for_a_cluster(tmp_path, capsys):
    spec = {**SPEC, "generations": 1}
    run = esgd.run(spec, store=str(tmp_path), task=my_task, progress=lambda line: None)
    assert run.spec.task == "test_api:my_task" and run.final() is not None
    with pytest.raises(InputError, match="cannot be imported by path"):
        esgd.run(spec, store=str(tmp_path), task=lambda: my_task())


SCRIPT = """
import esgd
from esgd.worker.tasks.digits import task as digits

def notebook_task():
    return digits(hidden=8)

spec = dict(name="nb", task="unused:task", generations=1, population=dict(mu=2, offspring=2, elite=1),
            sgd=dict(epochs=1, batch_size=[64]))
print(esgd.run(spec, store={store!r}, task=notebook_task, progress=lambda line: None).spec.task)
"""


def test_a_task_of_a_script_runs_here_and_a_cluster_compile_refuses_it(tmp_path, capsys):
    """A function of a script or notebook (`__main__`) runs on this machine; compiled for Argo, it is
    one line saying why a pod cannot import it."""
    script = tmp_path / "nb.py"
    script.write_text(SCRIPT.format(store=str(tmp_path / "store")))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, env=os.environ)
    assert done.returncode == 0 and done.stdout.strip() == "__main__:notebook_task", done.stderr
    spec = write_spec(tmp_path / "main.yaml", {**SPEC, "task": "__main__:notebook_task"})
    code, out, err = run_cli(capsys, "compile", spec, "--store", "s3://bucket/runs")
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert "task __main__:notebook_task is defined in a script or notebook" in err, err


def test_the_notebook_example_runs(tmp_path):
    (tmp_path / "examples").mkdir()
    (tmp_path / "examples" / "digits.yaml").write_text((ROOT / "examples" / "digits.yaml").read_text())
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "notebook.py")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    assert "winner " in done.stdout and (tmp_path / "esgd-report-notebook" / "fitness.png").exists()
