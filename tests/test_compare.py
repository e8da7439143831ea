"""`esgd compare`: the four modes with one spec and budget, the paper's Table 1 (text and JSON),
Fig. 1 and Fig. 2 with every mode, resuming, and bad input."""

import json

from esgd.cli.main import main
from esgd.core import keys
from esgd.core.records import FinalSummary
from esgd.store.uri import open_run

from helpers import history, tiny, write_spec

SPEC = tiny(
    generations=2, population={"mu": 3, "offspring": 3, "rho": 2, "elite": 2}, sgd={"epochs": 1, "batch_size": [64]}
)


def cli(capsys, *args) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out.strip(), err


def test_compare_runs_four_modes_and_prints_table_1(store_uri, tmp_path, capsys):
    spec = write_spec(tmp_path / "spec.yaml", SPEC)
    plots = tmp_path / "plots"
    code, out, err = cli(capsys, "compare", spec, "--store", store_uri, "--json", "--out", str(plots))
    assert code == 0, err
    results = [json.loads(line) for line in out.splitlines()]
    assert [r["mode"] for r in results] == ["single", "population", "no-evolution", "esgd"]
    for r in results:
        assert (
            r["run"].endswith(f"-{r['mode']}") and r["metric_name"] == "error rate" and r["error rate"] == r["metric"]
        )
        store, run_id = open_run(r["run"])
        summary = store.read(keys.final_summary(run_id), FinalSummary)
        assert r["best"] == summary.best_fitness == r["top15"][0] <= r["top15"][1]
        assert r["metric"] == summary.metric and r["best_member"] == summary.best_member
        assert f"mode: {r['mode']}" in store.get(keys.spec(run_id)).decode()
        rows = history(r["run"])
        assert {row["generation"] for row in rows} == {0, 1}  # the same budget: K generations of Ks epochs
    by_mode = {r["mode"]: r for r in results}
    assert by_mode["single"]["top15"] == [by_mode["single"]["best"]] * 2 and by_mode["single"]["epochs"] == 2
    assert by_mode["population"]["epochs"] == by_mode["no-evolution"]["epochs"] == by_mode["esgd"]["epochs"] == 2 * 3
    assert sorted(p.name for p in plots.iterdir()) == ["fitness.png", "offspring_in_elite.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in plots.iterdir())

    # the same command again resumes every run and prints the same numbers, here as the table
    code, out, err = cli(capsys, "compare", spec, "--store", store_uri, "--out", str(plots))
    assert code == 0 and all(f"resuming {r['mode']}: " in err for r in results)
    lines = out.splitlines()
    # µ = 3 and single's 1: the band ends at the worst survivor, not at a 15th best there is not
    assert "best fitness" in lines[1] and "[best, worst survivor]" in lines[1] and "error rate" in lines[1]
    for line, r in zip(lines[3:], results):
        assert (
            line.split()[0] == r["mode"]
            and f"{r['best']:.4f}" in line
            and f"[{r['top15'][0]:.4f}, {r['top15'][1]:.4f}]" in line
        )
        assert f"{100 * r['metric']:.2f} %" in line


def test_compare_a_subset_of_modes_and_bad_modes(tmp_path, capsys):
    spec = write_spec(tmp_path / "spec.yaml", tiny(generations=1, population={"mu": 2, "offspring": 2, "elite": 1}))
    store = str(tmp_path / "store")
    code, out, err = cli(
        capsys,
        "compare",
        spec,
        "--store",
        store,
        "--modes",
        "esgd,single",
        "--json",
        "--out",
        str(tmp_path / "p"),
        "--quiet",
    )
    assert code == 0, err
    assert [json.loads(line)["mode"] for line in out.splitlines()] == ["esgd", "single"]
    code, out, err = cli(capsys, "compare", spec, "--store", store, "--modes", "esgd,evolve")
    assert code == 2 and out == ""
    assert (
        err.strip()
        == "esgd: error: --modes: unknown mode(s) evolve (choose from single, population, no-evolution, esgd, pbt)"
    )
