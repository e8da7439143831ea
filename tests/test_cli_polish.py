"""The command lines' small promises (issue 13, items 1, 8 and 10): `esgd compile` never writes a
secret and refuses stores no pod can use; a reader that goes away ends a command quietly; the
[best, 15th best] band is named for what it is when µ < 15; progress lines number generations as
the report does (from 0) and say what is under way before the first one ends; a report says when a
run is unfinished, tells a run that does not exist from one without a generation yet, and names
--out as a folder; plots of a diverged run and of a mode without offspring say what they show;
printed URIs are plain."""

import contextlib
import io
import json
import os
import subprocess
import sys

import matplotlib
import pytest

from esgd.analysis import compare as compare_mod
from esgd.analysis import report
from esgd.cli.main import main
from esgd.controller.local import InProcess
from esgd.core.metrics import band_label, progress_line, summarize
from esgd.core.plan import generation
from esgd.store.local import LocalStore

from helpers import run_cli, start, tiny, write_spec

matplotlib.use("Agg")

SECRET = "TopSecretPw"
POPULATION = tiny(generations=2, mode="population", population={"mu": 3, "elite": 2}, sgd={"epochs": 1})


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("esgd: error: "), err
    assert "Traceback" not in err
    return lines[0]


# Item 1: esgd compile and the store URI -----------------------------------------------------------


@pytest.mark.parametrize(
    "store",
    [
        f"s3://AKIAXX:{SECRET}@bucket/x",
        f"s3://{SECRET}@bucket/x",
        f"s3://AKIAXX:ab/{SECRET}@bucket/x",  # a secret with a slash: no @ in the host part
        f"ftp://AKIAXX:{SECRET}@host/x",
        f"file://AKIAXX:{SECRET}@host/tmp/x",
    ],
)
@pytest.mark.parametrize("what", [["--generation", "0"], ["--launcher"]])
def test_compile_refuses_credentials_in_the_store_and_never_echoes_them(store, what, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("ESGD_STORE", raising=False)
    spec = write_spec(tmp_path / "spec.yaml", tiny())
    out = tmp_path / "wf.yaml"
    code, stdout, err = run_cli(capsys, "compile", spec, *what, "--store", store, "-o", str(out))
    line = one_error_line(err)
    assert code == 2 and "credentials in a store URI are not supported" in line and "--store" in line
    assert SECRET not in stdout + err and "AKIAXX" not in stdout + err and not out.exists()

    monkeypatch.setenv("ESGD_STORE", store)  # the same from the environment
    code, stdout, err = run_cli(capsys, "compile", spec, *what)
    assert code == 2 and "$ESGD_STORE" in one_error_line(err) and SECRET not in stdout + err


@pytest.mark.parametrize("store", ["ftp://host/x", "gs://bucket/x", "s3:///prefix", "relative/runs", "~/runs"])
def test_compile_refuses_a_store_no_pod_can_use(store, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("ESGD_STORE", raising=False)
    spec = write_spec(tmp_path / "spec.yaml", tiny())
    code, stdout, err = run_cli(capsys, "compile", spec, "--launcher", "--store", store)
    line = one_error_line(err)
    assert code == 2 and stdout == ""
    expected = {"ftp": "unsupported store URI scheme 'ftp://'", "gs:": "unsupported store URI scheme 'gs://'"}
    assert expected.get(store[:3], "--store") in line


def test_compile_keeps_s3_and_warns_for_an_absolute_path(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("ESGD_STORE", raising=False)
    spec = write_spec(tmp_path / "spec.yaml", tiny())
    code, out, err = run_cli(capsys, "compile", spec, "--store", "s3://bucket/prefix", "--run-id", "r")
    assert code == 0 and "s3://bucket/prefix/runs/r" in out and "warning" not in err
    code, out, err = run_cli(capsys, "compile", spec, "--store", str(tmp_path / "shared"), "--run-id", "r")
    assert code == 0 and f"{tmp_path / 'shared'}/runs/r" in out
    assert "warning" in err and "every pod must be able to reach it" in err


# Item 10: a reader that goes away ------------------------------------------------------------------


class ClosedPipe(io.StringIO):
    def write(self, text):
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self):
        raise BrokenPipeError(32, "Broken pipe")


def test_a_closed_stdout_ends_the_command_quietly(monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    code = main(["spec"])
    assert code == 141 and capsys.readouterr().err == ""


def test_a_closed_pipe_in_a_real_process_exits_141_without_a_word():
    """`esgd spec --schema | head -c0`: the reader is gone before the command writes."""
    read, write = os.pipe()
    os.close(read)
    try:
        result = subprocess.run(
            [sys.executable, "-c", "from esgd.cli.main import entry; entry()", "spec", "--schema"],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        )
    finally:
        os.close(write)
    assert result.returncode == 141 and result.stderr == ""


# Item 8: the band's name -----------------------------------------------------------------------------


def test_the_band_is_named_for_what_it_is():
    assert band_label([15]) == band_label([20, 40]) == "15th best"
    assert band_label([8]) == "8th best" and band_label([2]) == "2nd best" and band_label([1]) == "best"
    assert band_label([1, 8]) == "worst survivor"  # single and population side by side
    assert band_label([1, 20]) == "15th best or worst survivor"


def rows_of(fits: list[float], born: int = 0) -> list[dict]:
    """One generation's rows: parents with these fitness values (all survive), plus `born` offspring."""
    rows = [
        {"generation": 0, "role": "parent", "fitness": f, "selected": True, "elite": i < 2, "optimizer": "sgd"}
        for i, f in enumerate(fits)
    ]
    rows += [
        {"generation": 0, "role": "offspring", "fitness": 9.0, "selected": False, "elite": False, "optimizer": None}
        for _ in range(born)
    ]
    return [{**r, "backoffs": 0} for r in rows]


def test_summaries_band_and_phase():
    (few,) = summarize(rows_of([0.5, 0.1, 0.3]), 2)
    assert few["top15"] == [0.1, 0.5] and few["phase"] == "sgd"  # population mode: not "evolution"
    (many,) = summarize(rows_of([float(i) for i in range(20)], born=2), 2)
    assert many["top15"] == [0.0, 14.0] and many["phase"] == "evolution"


def result(mode: str, mu: int, phase: str, best=(1.0, 0.5), high=(2.0, 1.5)) -> dict:
    gens = [
        {
            "generation": g,
            "phase": phase,
            "best": b,
            "top15": [b, h],
            "offspring_in_elite": 0.5 if phase == "evolution" else 0.0,
        }
        for g, (b, h) in enumerate(zip(best, high))
    ]
    return {"mode": mode, "mu": mu, "best": best[-1], "top15": gens[-1]["top15"], "metric_name": "error rate",
            "metric": 0.1, "epochs": 2, "generations": gens}  # fmt: skip


def test_compare_table_names_the_band_by_mu():
    table = compare_mod.table([result("population", 8, "sgd"), result("esgd", 8, "evolution")], "t").splitlines()
    assert "[best, 8th best]" in table[1] and "15th" not in table[1]
    table = compare_mod.table([result("population", 20, "sgd"), result("esgd", 20, "evolution")], "t").splitlines()
    assert "[best, 15th best]" in table[1]
    four = [result("single", 1, "sgd"), result("population", 8, "sgd"), result("esgd", 8, "evolution")]
    table = compare_mod.table(four, "t").splitlines()
    assert "[best, worst survivor]" in table[1]
    assert all(f"[{r['top15'][0]:.4f}, {r['top15'][1]:.4f}]" in line for line, r in zip(table[3:], four))


@pytest.fixture
def figures(monkeypatch):
    """The figures the plot functions save (saved nowhere)."""
    from matplotlib.figure import Figure

    saved = []
    monkeypatch.setattr(Figure, "savefig", lambda self, path, **kw: saved.append(self))
    return saved


def integer_ticks(ax) -> bool:
    ax.figure.canvas.draw()
    return all(float(t).is_integer() for t in ax.get_xticks())


def test_compare_plots_name_the_band_and_the_modes_without_offspring(tmp_path, figures):
    results = [result("population", 8, "sgd"), result("esgd", 8, "evolution")]
    compare_mod.plots(results, tmp_path / "p", "t")
    fitness, offspring = figures
    assert "[best, 8th best]" in fitness.axes[0].get_title() and integer_ticks(fitness.axes[0])
    ax = offspring.axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["esgd"]  # no entry without bars
    assert any("no offspring in population" in t.get_text() for t in ax.texts) and integer_ticks(ax)


def summary(g: int, best: float, mean: float, phase: str = "evolution") -> dict:
    return {"generation": g, "phase": phase, "best": best, "elite_mean": best, "mean": mean,
            "top15": [best, mean], "offspring_in_elite": 0.25, "best_optimizer": "sgd", "backoffs": 0}  # fmt: skip


def test_report_plots_a_diverged_run_on_a_log_axis_with_whole_generations(tmp_path, figures):
    diverged = [summary(0, 2.0, 3.0), summary(1, 0.5, 4e12), summary(2, 0.3, 1e13)]
    report.plots(diverged, tmp_path / "p", "run", mu=8)
    fitness, offspring, optimizer = figures
    ax = fitness.axes[0]
    assert ax.get_yscale() == "log" and all(integer_ticks(f.axes[0]) for f in figures)
    assert "best .. 8th best" in [t.get_text() for t in ax.get_legend().get_texts()]
    figures.clear()
    report.plots([summary(0, 2.0, 3.0), summary(1, 0.5, 1.0)], tmp_path / "p", "run", mu=20)
    assert figures[0].axes[0].get_yscale() == "linear"
    assert "best .. 15th best" in [t.get_text() for t in figures[0].axes[0].get_legend().get_texts()]


def test_report_plot_of_a_mode_without_offspring_says_so(tmp_path, figures):
    report.plots([summary(g, 1.0 / (g + 1), 2.0, "sgd") for g in range(3)], tmp_path / "p", "run", mu=3)
    ax = figures[1].axes[0]
    assert not ax.patches and any("no offspring" in t.get_text() for t in ax.texts)


# Item 10: progress lines, reports, URIs ----------------------------------------------------------------


def test_progress_lines_number_generations_from_0():
    line = progress_line(summary(0, 1.0, 2.0), 12, 1.5)
    assert line.startswith("gen  0 of 0..11  best 1.0000")
    assert progress_line(summary(11, 1.0, 2.0), 12, 1.5).startswith("gen 11 of 0..11")
    assert "offspring-in-elite    -" in progress_line(summary(3, 1.0, 2.0, "sgd"), 12, 1.5)


@pytest.fixture(scope="module")
def population_run(tmp_path_factory):
    """`esgd run` of a 2-generation population spec, its store given with `..`: (URI, stdout, stderr)."""
    base = tmp_path_factory.mktemp("polish")
    spec = write_spec(base / "spec.yaml", POPULATION)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["run", spec, "--store", str(base / "sub" / ".." / "store"), "--run-id", "pop", "--device", "cpu"])
    assert code == 0, err.getvalue()
    return out.getvalue().strip(), err.getvalue(), base


def test_run_says_what_is_under_way_and_counts_as_the_report(population_run, capsys):
    uri, err, base = population_run
    lines = err.splitlines()
    assert lines[0] == f"run {uri}: loading torch and the task esgd.worker.tasks.digits:task …"
    assert lines[1].startswith(f"starting {uri} ")
    assert lines[2].startswith("initialising 3 individual(s), then generation 0")
    gens = [line.split()[1] for line in lines if line.startswith("gen ")]
    assert gens == ["0", "1"] and all(" of 0..1 " in line for line in lines if line.startswith("gen "))
    code, out, err = run_cli(capsys, "report", uri, "--json")
    assert code == 0 and [json.loads(x)["generation"] for x in out.splitlines()] == [0, 1]
    assert {json.loads(x)["phase"] for x in out.splitlines()} == {"sgd"} and "in progress" not in err


SLOW_TASK = """
import os, time
deadline = time.monotonic() + 120
while not os.path.exists(os.environ["GO"]) and time.monotonic() < deadline:
    time.sleep(0.05)  # the task's module is still importing: the run's first line must be out by now
from esgd.worker.tasks.digits import task
"""


def test_the_runs_uri_is_the_first_line_before_torch_and_the_task_load(tmp_path):
    """A user sees life at once and can follow the run from another terminal (`esgd report URI`):
    the run's URI is said before torch and the task are loaded (here a task whose import waits)."""
    (tmp_path / "slow_task.py").write_text(SLOW_TASK)
    spec = write_spec(tmp_path / "spec.yaml", dict(POPULATION, task="slow_task:task", generations=1))
    env = dict(os.environ, GO=str(tmp_path / "go"), PYTHONPATH=str(tmp_path))
    command = [sys.executable, "-c", "from esgd.cli.main import entry; entry()", "run", spec]
    with subprocess.Popen(
        [*command, "--store", str(tmp_path / "store"), "--run-id", "slow"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    ) as process:
        first = process.stderr.readline()  # while the task's import waits for "go"
        (tmp_path / "go").touch()
        out, err = process.communicate(timeout=300)
    uri = f"{(tmp_path / 'store').as_uri()}/runs/slow"
    assert first == f"run {uri}: loading torch and the task slow_task:task …\n", first + err
    assert process.returncode == 0 and out.strip() == uri, err


class Terminal(io.StringIO):
    def isatty(self):
        return True


def rendered(text: str) -> tuple[list[str], str]:
    """What a terminal shows of `text` (lines, and the line under the cursor): `\r\x1b[K` erases."""
    lines, current = [], ""
    for i, part in enumerate(text.split("\r\x1b[K")):
        current = "" if i else current
        *done, current = (current + part).split("\n")
        lines += done
    return lines, current


def test_a_terminal_sees_a_bar_per_generation_under_the_progress_lines(tmp_path, monkeypatch):
    spec = write_spec(tmp_path / "spec.yaml", POPULATION)
    monkeypatch.setattr(sys, "stderr", Terminal())
    assert main(["run", spec, "--store", str(tmp_path / "store"), "--device", "cpu"]) == 0
    shown = sys.stderr.getvalue()
    assert "gen 0 [--------------------]  0/3 steps  init" in shown  # the first generation: init, train, select
    assert "gen 1 [----------" in shown and "steps  train 0..3" in shown
    assert "ETA " in shown  # from the second step or generation on
    lines, under_cursor = rendered(shown)
    assert under_cursor == ""  # no bar is left once the run is complete
    assert [line.split()[1] for line in lines if line.startswith("gen ")] == ["0", "1"]
    assert lines[-1].startswith("run ") and lines[-1].endswith(" is complete")
    assert not any("[" in line and "steps" in line for line in lines)  # bars never become lines


def test_no_bar_where_stderr_is_not_a_terminal(population_run):
    _, err, _ = population_run
    assert "\r" not in err and "steps " not in err


def test_bad_input_found_before_loading_is_the_only_line(tmp_path, capsys):
    """A bad spec, run id or store is said before the run's first line: one line in all."""
    spec = write_spec(tmp_path / "spec.yaml", POPULATION)
    code, _, err = run_cli(capsys, "run", spec, "--store", str(tmp_path / "store"), "--run-id", "a/b")
    assert code == 2 and one_error_line(err).startswith("esgd: error: --run-id 'a/b'")
    assert not (tmp_path / "store" / "runs").exists()


def test_printed_run_uris_are_plain(population_run, tmp_path):
    uri, err, base = population_run
    assert uri == f"{(base / 'store').as_uri()}/runs/pop" and "/../" not in err
    assert LocalStore(tmp_path / "a" / ".." / "b").uri == (tmp_path / "b").as_uri()
    assert LocalStore(tmp_path / "a" / "." / "b").uri == (tmp_path / "a" / "b").as_uri()


def test_report_out_must_be_a_folder(population_run, tmp_path, capsys):
    uri = population_run[0]
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    for out in (blocker, blocker / "plots"):
        code, stdout, err = run_cli(capsys, "report", uri, "--out", str(out))
        line = one_error_line(err)
        assert code == 2 and f"--out {out}: not a directory" in line and "File exists" not in line
    assert blocker.read_text() == "x"
    code, stdout, err = run_cli(capsys, "report", uri, "--out", str(tmp_path / "plots"))
    assert code == 0 and "[best, 3rd best]" in err and "generation 1 of 0..1" in err


def test_compare_refuses_a_file_as_out_before_it_runs(tmp_path, capsys):
    spec = write_spec(tmp_path / "spec.yaml", POPULATION)
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    store = tmp_path / "store"
    code, out, err = run_cli(capsys, "compare", spec, "--store", str(store), "--out", str(blocker))
    assert code == 2 and "not a directory" in one_error_line(err) and not store.exists()


def test_reports_of_a_missing_and_of_an_unfinished_run(tmp_path, capsys):
    store = str(tmp_path / "store")
    missing = f"{LocalStore(store).uri}/runs/nope"
    for command in ("report", "lineage", "replay"):
        code, out, err = run_cli(capsys, command, missing)
        assert (
            code == 2
            and one_error_line(err) == f"esgd: error: no run at {missing} (`esgd run` prints the URI of each run)"
        )

    run = start(store, POPULATION, "unfinished")
    code, out, err = run_cli(capsys, "report", run.uri, "--json")
    line = one_error_line(err)
    assert code == 2 and "has no committed generation yet (0 of 2)" in line and "no run at" not in line

    engine = InProcess("cpu")
    engine.run_phase(run.ref, generation(run.spec, 0, 8, 8), 0)
    code, out, err = run_cli(capsys, "report", run.uri, "--json")
    assert code == 0 and [json.loads(x)["generation"] for x in out.splitlines()] == [0]
    assert "run in progress or stopped: 1 of 2 generations committed" in err
    code, out, err = run_cli(capsys, "report", run.uri, "--out", str(tmp_path / "plots"))
    assert code == 0 and "run in progress or stopped: 1 of 2 generations committed" in err


@pytest.mark.parametrize(
    "uri", ["ftp://user:TopSecretPw@host/x", "AKIAXX:TopSecretPw@bucket/x", "s3://AKIAXX:Top/SecretPw@bucket/x"]
)
def test_every_command_refuses_credentials_in_a_store_uri_without_echoing_them(uri, tmp_path, capsys):
    """esgd run (any command opening a store): one line, exit 2, the secret never printed."""
    from helpers import run_cli, small, write_spec

    spec = write_spec(tmp_path / "spec.yaml", small())
    code, out, err = run_cli(capsys, "run", spec, "--store", uri)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "TopSecret" not in out + err and "Top/" not in out + err and "AKIAXX" not in out + err
    assert not any(tmp_path.iterdir()) or [p.name for p in tmp_path.iterdir()] == ["spec.yaml"]
