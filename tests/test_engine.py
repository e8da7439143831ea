"""End to end on the CPU: Theorem 1, determinism, resume at every step, modes, CLI, report."""

import json
import subprocess
import sys

import pytest

from esgd.controller.local import local_engine
from esgd.core import keys
from esgd.core.metrics import summarize
from esgd.core.plan import Step
from esgd.core.records import FinalSummary, OffspringRecord
from esgd.store.uri import open_store, run_uri
from esgd.worker import steps
from esgd.worker.run import Run
from esgd.worker.transfers import Transfers

from helpers import all_steps, dies_after_commits, execute, history, run_cli, start, tiny, write_spec


def test_end_to_end_run_and_report(store_uri, tmp_path, capsys):
    spec_file = write_spec(tmp_path / "spec.yaml", tiny(finetune={"epochs": 1}))
    code, uri, err = run_cli(capsys, "run", spec_file, "--store", store_uri)
    assert code == 0, err
    assert uri.endswith("/runs/" + uri.rsplit("/", 1)[1]) and "gen 2 of 0..2" in err
    rows = history(uri)
    assert {r["generation"] for r in rows} == {0, 1, 2, 3}  # 3 generations + fine-tuning
    assert sum(r["role"] == "offspring" for r in rows) == 3 * 4
    assert sum(r["role"] == "parent" for r in rows) == 3 * 4
    for r in rows:
        if r["role"] == "parent":
            assert r["optimizer"] in ("sgd", "nesterov", "adam") and r["epochs"] == 2
        if r["role"] == "offspring":
            assert len(r["parents"]) == 2 and r["sigma"] > 0
    for generation in range(3):
        survivors = [r for r in rows if r["generation"] == generation and r["selected"]]
        assert len(survivors) == 4 and sum(r["elite"] for r in survivors) == 2

    code, out, err = run_cli(capsys, "report", uri, "--json")
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line["generation"] for line in lines] == [0, 1, 2, 3] and lines[-1]["phase"] == "finetune"
    for line in lines:
        assert {"generation", "best", "elite_mean", "mean", "top15", "offspring_in_elite"} <= set(line)
        assert line["top15"][0] == line["best"] <= line["elite_mean"] <= line["top15"][1]
        assert 0 <= line["offspring_in_elite"] <= 1

    code, out, err = run_cli(capsys, "report", uri, "--out", str(tmp_path / "plots"))
    assert code == 0, err
    pngs = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert pngs == ["best_optimizer.png", "fitness.png", "offspring_in_elite.png"]
    assert all((tmp_path / "plots" / p).read_bytes()[:4] == b"\x89PNG" for p in pngs)
    assert "best individual" in err and "error rate" in err


def test_theorem_1_best_and_elite_mean_never_increase(store_uri):
    run = start(store_uri, tiny(generations=5, population={"mu": 6, "offspring": 6, "elite": 3}), "thm")
    execute(run)
    rows = history(run.uri)
    summaries = summarize(rows, run.spec.m)
    best = [s["best"] for s in summaries]
    elite_mean = [s["elite_mean"] for s in summaries]
    assert all(b <= a for a, b in zip(best, best[1:])), best
    assert all(b <= a for a, b in zip(elite_mean, elite_mean[1:])), elite_mean
    assert best[-1] < best[0]
    for r in rows:  # strict back-off: no individual gets worse in the SGD step
        if r["role"] == "parent":
            assert r["fitness"] <= r["fitness_before"]


def test_same_spec_same_history(store_uri):
    a = start(store_uri, tiny(), "a")
    b = start(store_uri, tiny(), "b")
    execute(a)
    execute(b)
    assert history(a.uri) == history(b.uri)
    c = start(store_uri, tiny(seed=8), "c")
    execute(c)
    assert history(c.uri) != history(a.uri)


def test_evolve_makes_the_same_offspring_one_or_several_at_once(store_uri):
    made = []
    for at_once in (1, 4):
        run = start(store_uri, tiny(generations=1), f"at-once-{at_once}")
        run.transfers = Transfers(run.transfers.objects, computing=at_once)
        for step in (Step("init"), Step("train", 0), Step("evolve", 0, 0)):
            steps.run(run, step)
        records = [
            run.store.read(keys.offspring_record(run.id, 0, 0, keys.member_id(0, 0, i)), OffspringRecord)
            for i in range(run.spec.population.offspring)
        ]
        made.append([(r.checkpoint.sha256, r.parents) for r in records])
    assert made[0] == made[1]


@pytest.mark.parametrize("mode", ["esgd", "pbt"])
def test_stopped_between_any_two_steps_and_resumed_gives_the_same_history(store_uri, mode):
    data = tiny(mode=mode, generations=2, finetune={"epochs": 1}, sgd={"batch_size": [64]})
    reference = start(store_uri, data, "uninterrupted")
    execute(reference)
    expected = history(reference.uri)
    plan = all_steps(reference.spec, *local_engine("cpu").split(reference.spec))  # the engine's own steps
    for stop in range(1, len(plan)):
        run = start(store_uri, data, f"stop-{stop}")
        for step in plan[:stop]:
            steps.run(run, step)
        resumed = Run.open(run.uri, "cpu")  # a fresh driver
        execute(resumed)
        assert history(run.uri) == expected, f"stopped after step {stop}: {plan[stop - 1]}"


def test_a_train_step_that_died_between_two_commits_completes_identically(store_uri):
    data = tiny(generations=1, sgd={"batch_size": [64]})
    reference = start(store_uri, data, "whole")
    execute(reference)
    run = start(store_uri, data, "died")
    steps.run(run, Step("init"))
    dies_after_commits(run.store, 2)
    with pytest.raises(KeyboardInterrupt):
        steps.run(run, Step("train", 0, members=(0, 4)))
    assert len(run.store.list(f"{keys.gen(run.id, 0)}/train")) > 2  # two records and some checkpoints
    execute(Run.open(run.uri, "cpu"))
    assert history(run.uri) == history(reference.uri)


def test_rerunning_a_committed_step_changes_nothing(store_uri):
    run = start(store_uri, tiny(generations=1), "rerun")
    execute(run)
    before = {k: run.store.get(k) for k in run.store.list(keys.run(run.id))}
    for step in all_steps(run.spec, pack=4):
        steps.run(run, step)
    after = {k: run.store.get(k) for k in run.store.list(keys.run(run.id))}
    assert after == before


def test_worker_commands_as_subprocesses_match_the_in_process_run(store_uri):
    data = tiny(generations=1)
    in_process = start(store_uri, data, "inproc")
    execute(in_process)
    by_cli = start(store_uri, data, "bycli")
    for step in all_steps(by_cli.spec, *local_engine("cpu").split(by_cli.spec)):
        cmd = [sys.executable, "-m", "esgd.cli.worker", *step.argv(by_cli.uri), "--device", "cpu"]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
    assert history(by_cli.uri) == history(in_process.uri)


def test_population_mode_keeps_each_individuals_hyper_parameters(store_uri):
    run = start(store_uri, tiny(mode="population"), "pop")
    execute(run)
    rows = history(run.uri)
    assert all(r["role"] == "parent" for r in rows)
    by_member = {}
    for r in rows:
        by_member.setdefault(r["member"], set()).add((r["optimizer"], r["lr"], r["batch_size"]))
    assert len(by_member) == 4 and all(len(v) == 1 for v in by_member.values())


@pytest.mark.parametrize("hparams, draws", [("redraw", 3), ("keep", 1)])
def test_no_evolution_mode_never_recombines_and_draws_as_esgd_does(store_uri, hparams, draws):
    """ESGD without the evolution step: hyper-parameters redrawn every generation (the paper's) or
    kept (the default, which makes it the population baseline)."""
    run = start(store_uri, tiny(mode="no-evolution", sgd={"hparams": hparams}), f"noevo-{hparams}")
    execute(run)
    rows = history(run.uri)
    assert all(r["role"] == "parent" for r in rows) and len({r["member"] for r in rows}) == 4
    lrs = [r["lr"] for r in rows if r["member"] == "init-000"]
    assert len(set(lrs)) == draws


def test_inherited_hyper_parameters_are_the_fittest_parents(store_uri):
    """sgd.hparams: inherit: an offspring trains with what its fittest parent trained with in the
    generation it was born in; a member that trained keeps its own."""
    run = start(store_uri, tiny(generations=4, sgd={"hparams": "inherit"}), "inherit")
    execute(run)
    rows = history(run.uri)
    trained = {(r["generation"], r["member"]): r for r in rows if r["role"] == "parent"}
    fields = ("optimizer", "lr", "momentum", "batch_size")
    inherited = kept = 0
    for (generation, member), row in trained.items():
        if member.startswith("g"):  # an offspring, trained from the generation after its birth
            born = int(member[1:5])
            if (born + 1, member) == (generation, member):
                offspring = next(r for r in rows if r["member"] == member and r["role"] == "offspring")
                parent = trained[born, offspring["parents"][0]]
                assert [row[f] for f in fields] == [parent[f] for f in fields]
                inherited += 1
        if (generation - 1, member) in trained:
            assert [row[f] for f in fields] == [trained[generation - 1, member][f] for f in fields]
            kept += 1
    assert inherited > 0 and kept > 0


def test_single_mode_trains_one_model_and_halves_its_lr(store_uri):
    run = start(store_uri, tiny(mode="single", single={"optimizer": "sgd", "lr": 50.0, "momentum": 0.0}), "single")
    execute(run)
    rows = history(run.uri)
    assert [r["member"] for r in rows] == ["init-000"] * 3
    assert rows[0]["backoffs"] >= 1
    lrs = [r["lr"] for r in rows]
    assert lrs[1] <= lrs[0] / 2 ** rows[0]["backoffs"] + 1e-12 and all(b <= a for a, b in zip(lrs, lrs[1:]))


def test_reference_model_and_init_from_checkpoint(store_uri, tmp_path):
    base = start(store_uri, tiny(generations=1), "base")
    execute(base)
    best = base.store.read(keys.final_summary(base.id), FinalSummary)
    checkpoint_file = tmp_path / "best.arrow"
    checkpoint_file.write_bytes(base.blobs.get(best.checkpoint))

    data = tiny(
        generations=2,
        reference={"checkpoint": str(checkpoint_file)},
        population={"init": {"checkpoint": str(checkpoint_file), "sigma": 0.01}},
    )
    run = start(store_uri, data, "ref")
    execute(run)
    rows = history(run.uri)
    refs = [r for r in rows if r["role"] == "reference"]
    assert [r["member"] for r in refs] == ["g0000-r0-ref", "g0001-r0-ref"]
    assert refs[0]["fitness"] == refs[1]["fitness"] == pytest.approx(best.best_fitness)
    initial = [r["fitness_before"] for r in rows if r["generation"] == 0 and r["role"] == "parent"]
    assert len(set(initial)) == 4  # perturbed individually ...
    assert all(abs(f - best.best_fitness) < 0.2 for f in initial)  # ... around the checkpoint


def test_run_uri_is_printed_and_an_existing_run_resumes(store_uri, tmp_path, capsys):
    spec_file = write_spec(tmp_path / "spec.yaml", tiny(generations=1))
    code, uri, _ = run_cli(capsys, "run", spec_file, "--store", store_uri, "--run-id", "again")
    assert code == 0 and uri == run_uri(open_store(store_uri), "again")
    code, uri2, err = run_cli(capsys, "run", spec_file, "--store", store_uri, "--run-id", "again")
    assert code == 0 and uri2 == uri and "resuming" in err


def test_a_phase_is_committed_only_with_its_history(store_uri, monkeypatch):
    """The last step of a phase merges the history before it commits the phase's marker, so a run
    killed in between redoes that step and never ends committed with a history that lacks rows."""
    from esgd.worker import history as history_module

    data = tiny(generations=1, finetune={"epochs": 1})
    reference = start(store_uri, data, "whole")
    execute(reference)
    run = start(store_uri, data, "killed")
    real, calls = history_module.rebuild, []

    def killed_in_finish(worker):
        calls.append(worker.id)
        if len(calls) == 2:  # generation 0's select merged; the finish step dies before its merge
            raise KeyboardInterrupt("killed")
        real(worker)

    with monkeypatch.context() as patched, pytest.raises(KeyboardInterrupt):
        patched.setattr(history_module, "rebuild", killed_in_finish)
        execute(run)
    assert not run.store.exists(keys.final_manifest(run.id))  # the final phase is not committed ...
    execute(Run.open(run.uri, "cpu"))  # ... so the resumed run does it again
    rows = history(run.uri)
    assert rows == history(reference.uri) and any(r["role"] == "finetune" for r in rows)


def test_the_local_gpu_engine_runs_stages_as_worker_subprocesses(tmp_path):
    """LocalGPUs with two "devices" (CPUs here): the steps of a stage as esgd-worker subprocesses
    give the history of one process (one at a time, so that the split does not round differently);
    a worker that fails stops the run with the command and its exit code."""
    from esgd.controller.driver import Driver
    from esgd.controller.local import LocalGPUs
    from esgd.core.errors import RunStopped

    data = tiny(generations=1, pack={"size": 1})
    reference = start(str(tmp_path), data, "one-process")
    execute(reference)
    run = start(str(tmp_path), data, "subprocesses")
    Driver(run.ref, LocalGPUs(["cpu", "cpu"]), log=lambda line: None).drive()
    assert history(run.uri) == history(reference.uri)

    broken = start(str(tmp_path), data, "broken")
    steps.run(broken, Step("init"))
    victim = next(k for k in broken.store.list(keys.run(broken.id) + "/init") if k.endswith(".arrow"))
    broken.store.put(victim, b"damaged")
    with pytest.raises(
        RunStopped, match=r"generation 0 failed 1 time\(s\); last: esgd-worker train .* exited with code 2"
    ):
        Driver(broken.ref, LocalGPUs(["cpu", "cpu"]), log=lambda line: None).drive()
