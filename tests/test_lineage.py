"""`esgd lineage` (ancestry, line, schedule; DOT and Parquet export) and `esgd replay`: one network
re-trained by an individual's schedule. Without a birth on the line the replay repeats a run that
trained one individual at a time bit for bit (no-evolution with relaxed back-off and fine-tuning,
single with its lr halvings, an initial member of an esgd run); with births it follows the same
steps and seeds, identical up to the first birth and different after it (it skipped the
recombination). A packed run (many individuals per vmap call) rounds differently: close, not equal."""

import io
import json

import pyarrow.parquet as pq
import pytest

from esgd.analysis.lineage import lineage
from esgd.analysis.replay import replay
from esgd.analysis.report import read_history
from esgd.core import keys
from esgd.core.records import FinalSummary
from esgd.store import checkpoint
from esgd.store.uri import open_store
from esgd.worker.run import Run
from esgd.worker.train import fitness
from esgd.worker.weights import load_into

from helpers import execute, history, tiny, write_spec
from helpers import run_cli as cli
from helpers import start as created

HP = ("optimizer", "lr", "momentum", "weight_decay", "beta1", "beta2", "batch_size")
ONE_AT_A_TIME = {"pack": {"size": 1}}
ESGD = tiny(generations=4, seed=3, finetune={"epochs": 1}, **ONE_AT_A_TIME)


def start(store_uri: str, data: dict, run_id: str) -> Run:
    """A run, executed to the end."""
    run = created(store_uri, data, run_id)
    execute(run)
    return run


@pytest.fixture(scope="module")
def esgd_run(tmp_path_factory) -> Run:
    return start(str(tmp_path_factory.mktemp("lineage")), ESGD, "esgd")


def test_lineage_cli_ancestry_dot_and_parquet(store_uri, tmp_path, capsys):
    spec = write_spec(tmp_path / "spec.yaml", ESGD)
    code, uri, err = cli(capsys, "run", spec, "--store", store_uri)
    assert code == 0, err
    winner = open_store(store_uri).read(keys.final_summary(uri.rsplit("/", 1)[1]), FinalSummary).best_member
    code, out, err = cli(
        capsys, "lineage", uri, "--dot", str(tmp_path / "g.dot"), "--parquet", str(tmp_path / "g.parquet")
    )
    assert code == 0, err
    assert f"member {winner} (the winner)" in out and "line (fittest parent at each birth)" in out
    code, out, _ = cli(capsys, "lineage", uri, "--json")
    lin = json.loads(out)
    rows = history(uri)
    births = {r["member"]: r for r in rows if r["role"] == "offspring"}

    assert lin["member"] == winner == lin["line"][-1] and lin["line"][0].startswith("init-")
    for child, parent in zip(lin["line"][1:], lin["line"]):
        assert births[child]["parents"][0] == parent  # the line goes through the fittest parent
    for m in lin["ancestors"]:  # closed under "parent of"
        assert m not in births or set(births[m]["parents"]) <= set(lin["ancestors"])
    assert sorted((e["parent"], e["child"]) for e in lin["edges"]) == sorted(
        (p, m) for m in lin["ancestors"] if m in births for p in births[m]["parents"]
    )
    # the schedule: one SGD step per generation along the line, then the fine-tuning
    assert [s["generation"] for s in lin["schedule"]] == [0, 1, 2, 3, 4] and lin["schedule"][-1]["role"] == "finetune"
    by_key = {(r["generation"], r["member"], r["role"]): r for r in rows}
    for step in lin["schedule"]:
        assert {k: step[k] for k in HP} == {k: by_key[step["generation"], step["member"], step["role"]][k] for k in HP}

    dot = (tmp_path / "g.dot").read_text()
    assert dot.startswith("digraph") and dot.rstrip().endswith("}")
    assert dot.count(" -> ") == len(lin["edges"]) and dot.count("[label=") == len(lin["ancestors"]) + len(lin["edges"])
    assert "peripheries=2" in dot  # the member itself
    table = pq.read_table(io.BytesIO((tmp_path / "g.parquet").read_bytes()))
    assert table.schema.metadata[b"esgd.schema"] == b"lineage/1"
    exported = table.to_pylist()
    assert {r["member"] for r in exported} == set(lin["ancestors"])
    assert {r["member"] for r in exported if r["on_line"]} == set(lin["line"])
    assert all(r == {**by_key[r["generation"], r["member"], r["role"]], "on_line": r["on_line"]} for r in exported)


def test_unknown_member_gives_one_line(esgd_run, capsys):
    code, out, err = cli(capsys, "lineage", esgd_run.uri, "no-such-member")
    assert code == 2 and out == "" and err.strip() == "esgd: error: member 'no-such-member' is not in the run's history"
    code, out, err = cli(capsys, "replay", esgd_run.uri, "no-such-member")
    assert code == 2 and "not in the run's history" in err


def _assert_exact(steps: list[dict]) -> None:
    for s in steps:
        assert s["replay_fitness_before"] == s["run_fitness_before"], s
        assert s["replay_fitness"] == s["run_fitness"] and s["replay_backoffs"] == s["run_backoffs"], s


def test_replay_repeats_a_run_without_evolution_exactly(tmp_path, capsys):
    data = tiny(mode="no-evolution", generations=3, sgd={"backoff": 0.5}, finetune={"epochs": 1}, **ONE_AT_A_TIME)
    run = start(str(tmp_path), data, "noevo")
    summary = run.store.read(keys.final_summary(run.id), FinalSummary)
    out_file = tmp_path / "replayed.arrow"
    code, out, err = cli(capsys, "replay", run.uri, "--json", "--out", str(out_file))
    assert code == 0, err
    result = json.loads(out)
    assert result["member"] == summary.best_member and result["line"] == [summary.best_member]
    assert [s["generation"] for s in result["steps"]] == [0, 1, 2, 3]  # 3 generations + fine-tuning
    _assert_exact(result["steps"])
    assert result["fitness"] == summary.best_fitness and result["metric"] == pytest.approx(summary.metric)
    model = run.new_model()  # the written checkpoint is the replayed network
    load_into(model, *checkpoint.decode(out_file.read_bytes()))
    assert fitness(model, run.task, run.fitness_data) == summary.best_fitness


def test_replay_of_a_packed_run_agrees_up_to_rounding(tmp_path):
    run = start(str(tmp_path), tiny(mode="no-evolution", generations=3, pack={"size": "auto"}), "packed")
    steps, _, _ = replay(run)
    for s in steps:
        assert (
            s["replay_fitness"] == pytest.approx(s["run_fitness"], rel=1e-4)
            and s["replay_backoffs"] == s["run_backoffs"]
        )


def test_replay_of_the_single_mode_halves_the_lr_as_the_run_did(tmp_path):
    run = start(
        str(tmp_path),
        tiny(mode="single", generations=3, single={"optimizer": "sgd", "lr": 3.0, "momentum": 0.0}),
        "single",
    )
    steps, _, _ = replay(run)
    _assert_exact(steps)
    assert sum(s["run_backoffs"] for s in steps) >= 1
    assert steps[0]["lr"] == 3.0 and steps[-1]["lr"] < 3.0  # it starts each generation from the halved lr


def test_replay_with_recombination_follows_the_line(esgd_run):
    rows = read_history(esgd_run.store, esgd_run.id)
    steps, _, lin = replay(esgd_run)
    assert len(lin.line) > 1, "the winner of this seed descends from a recombination"
    assert [(s["generation"], s["member"]) for s in steps] == [(r["generation"], r["member"]) for r in lin.schedule]
    assert all({k: s[k] for k in HP} == {k: r[k] for k in HP} for s, r in zip(steps, lin.schedule))
    first_birth = min(lin.births[m]["generation"] for m in lin.line[1:])
    before = [s for s in steps if s["generation"] <= first_birth]
    after = [s for s in steps if s["generation"] > first_birth]
    _assert_exact(before)  # the same network until the line's first birth ...
    assert any(s["replay_fitness"] != s["run_fitness"] for s in after)  # ... a different one after it
    # an initial member that was never recombined and lived to the end replays exactly
    survivors = {r["member"] for r in rows if r["role"] == "finetune"}
    initial = sorted(m for m in survivors if m.startswith("init-"))
    assert initial, "this seed keeps an initial member to the end"
    steps, _, lin = replay(esgd_run, initial[0])
    assert lin.line == [initial[0]] and len(steps) == 5
    _assert_exact(steps)


def test_lineage_of_a_member_keeps_only_the_part_of_each_ancestor_before_its_child(esgd_run):
    rows = read_history(esgd_run.store, esgd_run.id)
    child = next(r for r in rows if r["role"] == "offspring" and r["generation"] == 1)
    lin = lineage(rows, child["member"])
    assert lin.line == [child["parents"][0], child["member"]] or len(lin.line) > 2
    for r in lin.rows:
        if r["member"] != child["member"] and r["role"] == "parent":
            assert r["generation"] <= 1  # nothing an ancestor did after the child's birth


def test_a_line_that_starts_at_the_reference_model_replays_from_its_checkpoint(tmp_path):
    base = start(str(tmp_path), tiny(generations=1, **ONE_AT_A_TIME), "base")
    best = base.store.read(keys.final_summary(base.id), FinalSummary)
    data = tiny(generations=3, reference={"checkpoint": f"{base.store.uri}/{best.checkpoint.key}"}, **ONE_AT_A_TIME)
    run = start(str(tmp_path), data, "ref")
    rows = read_history(run.store, run.id)
    member = next(r["member"] for r in rows if r["role"] == "reference" and r["selected"] and r["generation"] < 2)
    steps, _, lin = replay(run, member)
    born = int(member[1:5])  # g<generation>-r<round>-ref
    trained = [r["generation"] for r in rows if r["member"] == member and r["role"] == "parent"]
    assert trained and trained[0] == born + 1  # trained from the next generation on, while it survived
    assert lin.line == [member] and [s["generation"] for s in steps] == trained
    _assert_exact(steps)
