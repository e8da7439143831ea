"""Population Based Training (mode pbt): the pure exploit and explore decisions (esgd.core.pbt), the
spec section and its errors, and tiny runs end to end: deterministic, copies holding their donors'
checkpoints with explored hyper-parameters, the best never worse, report, lineage, replay, verify,
export and compare reading a pbt run. Resuming after a stop between any two steps:
tests/test_engine.py; the Argo Workflows of a pbt spec: tests/test_workflows.py."""

import json
import re
from dataclasses import replace

import numpy as np
import pytest

from esgd.analysis.compare import MODES, parse_modes, with_mode
from esgd.analysis.replay import replay
from esgd.core import keys, pbt
from esgd.core.hparams import HParams
from esgd.core.metrics import summarize
from esgd.core.records import BlobRef, HistoryRow, Member, TrainRecord
from esgd.core.rng import generator
from esgd.core.spec import SpecError, load_spec, parse_spec
from esgd.core.tables import read_table, to_parquet
from esgd.store import history as stored
from esgd.store.tables import read_rows

from helpers import execute, history, run_cli, start, tiny, write_spec

POOL = {
    "sgd": {"lr": [0.01, 1.0], "momentum": [0.0, 0.9], "weight_decay": [0.0, 0.01]},
    "adam": {"lr": [1e-4, 1e-2], "beta1": [0.8, 0.95], "beta2": [0.99, 0.999]},
}


def spec(**pbt_section):
    return parse_spec(
        {
            "mode": "pbt",
            "pbt": pbt_section,
            "population": {"mu": 8},
            "sgd": {"optimizers": POOL, "batch_size": [32, 64, 128]},
        }
    )


SGD = HParams("sgd", 0.1, 0.5, 0.005, 0.9, 0.999, 64)


# Exploit: who copies whom ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "mu, quantile, n",
    [(1, 0.25, 0), (2, 0.25, 1), (3, 0.25, 1), (4, 0.25, 1), (5, 0.25, 2), (8, 0.25, 2), (10, 0.3, 3), (3, 0.5, 1)],
)
def test_the_quantiles_round_up_and_never_overlap(mu, quantile, n):
    """⌈µ·q⌉ capped at ⌊µ/2⌋ (Ray Tune's rule): µ = 1 has nobody to copy, µ = 2 and 3 copy one."""
    assert pbt.quantile_size(mu, quantile) == n
    bottom, top = pbt.quantiles(np.arange(mu, dtype=float), quantile)
    assert len(bottom) == len(top) == n and not set(bottom) & set(top)


def test_the_bottom_quantile_copies_the_top_one():
    losses = [0.5, 3.0, 0.1, 2.0, 0.9, 4.0, 0.2, 1.0]  # best: slots 2, 6; worst: 5, 1
    bottom, top = pbt.quantiles(losses, 0.25)
    assert top == [2, 6] and sorted(bottom) == [1, 5]
    s = spec()
    made = pbt.exploits(s, 3, [f"m{i}" for i in range(8)], losses, [SGD] * 8)
    assert [e.slot for e in made] == [1, 5] and all(e.donor in (2, 6) for e in made)
    assert made == pbt.exploits(s, 3, [f"m{i}" for i in range(8)], losses, [SGD] * 8)  # the same draws again
    donors = {pbt.exploits(s, g, [f"m{i}" for i in range(8)], losses, [SGD] * 8)[0].donor for g in range(20)}
    assert donors == {2, 6}  # drawn uniformly from the top: both appear over the generations


def test_ties_and_nan_are_ranked_deterministically():
    """Equal losses keep slot order (the lower slot ranks better); NaN counts as inf, the worst."""
    assert pbt.quantiles([1.0] * 4, 0.5) == ([2, 3], [0, 1])
    losses = [float("nan"), 1.0, float("inf"), 0.5]  # NaN and inf tie as worst: slot 2 ranks below slot 0
    assert pbt.quantiles(losses, 0.25) == ([2], [3]) and pbt.quantiles(losses, 0.5) == ([0, 2], [3, 1])


def test_a_population_of_one_exploits_nobody_and_two_copy_the_better():
    s = spec()
    assert pbt.exploits(s, 0, ["a"], [1.0], [SGD]) == []
    (only,) = pbt.exploits(s, 0, ["a", "b"], [2.0, 1.0], [SGD, SGD])
    assert (only.slot, only.donor) == (0, 1)


def test_the_next_population_holds_copies_of_the_donors():
    ref = BlobRef("k", "0" * 64, 1)
    trained = [
        Member(f"init-{i:03d}", replace(ref, key=f"ck{i}"), f, "parent", 0, (), False, replace(SGD, lr=0.1 * (i + 1)))
        for i, f in enumerate([0.5, 3.0, 0.1, 2.0])
    ]
    out = pbt.next_population(spec(), 4, trained)
    assert out[0] == trained[0] and out[2] == trained[2] and out[3] == trained[3]  # the others move on as trained
    copy, donor = out[1], trained[2]
    assert copy.member == keys.copy_id(4, 1) == "g0004-c001" and copy.role == pbt.COPY and copy.born == 4
    assert (copy.checkpoint, copy.fitness, copy.parents) == (donor.checkpoint, donor.fitness, (donor.member,))
    assert copy.hparams != donor.hparams


# Explore: perturb or resample within the spec's ranges -------------------------------------------


def explored(s, hp=SGD, n=2000, purpose="t"):
    return [pbt.explore(generator(s.seed, 0, i, purpose), hp, s) for i in range(n)]


def test_perturbations_stay_in_the_ranges_and_use_the_factors():
    s = spec(resample=0.0, factors=[0.5, 1.25])
    draws = explored(s, n=200)
    for hp in draws:
        assert hp.optimizer == "sgd"  # kept: never resampled
        assert hp.lr in (SGD.lr * 0.5, SGD.lr * 1.25) and hp.momentum in (0.25, 0.625)
        assert hp.weight_decay in (0.0025, 0.005 * 1.25)
        assert (hp.beta1, hp.beta2) == (0.9, 0.999)  # sgd's ranges are the defaults [0.9, 0.9], [0.999, 0.999]
        assert hp.batch_size in (32, 128)  # 64 moves one allowed value down (0.5) or up (1.25)
    assert len({(hp.lr, hp.momentum) for hp in draws}) == 4  # each float draws its own factor
    top = explored(s, replace(SGD, lr=0.9, batch_size=128), n=200)
    assert {hp.lr for hp in top} == {0.45, 1.0} and {hp.batch_size for hp in top} == {64, 128}  # clipped at the top
    assert {hp.batch_size for hp in explored(spec(resample=0.0, factors=[1.0]), n=50)} == {64}


def test_resample_probability_is_honoured():
    """With resample = 0.3 about 30 % of the floats are drawn afresh (not the copied value times a
    factor), and the family is drawn afresh as often, landing on the other of two families half the time."""
    s = spec(resample=0.3)
    draws = explored(s, n=4000)
    fresh_lr = np.mean([not any(np.isclose(hp.lr, SGD.lr * f, rtol=1e-12) for f in (0.8, 1.2)) for hp in draws])
    other = np.mean([hp.optimizer == "adam" for hp in draws])
    assert abs(fresh_lr - (0.15 + 0.85 * 0.3)) < 0.03  # a new family (0.3 × 0.5) draws its lr afresh too
    assert abs(other - 0.15) < 0.02
    for hp in draws:
        assert (1e-4 <= hp.lr <= 1e-2) if hp.optimizer == "adam" else (0.01 <= hp.lr <= 1.0)
        if hp.optimizer == "adam":
            assert 0.8 <= hp.beta1 <= 0.95 and 0.99 <= hp.beta2 <= 0.999 and hp.momentum == 0.0
    assert all(hp.optimizer == "sgd" for hp in explored(spec(resample=0.0), n=200))
    assert all(hp.batch_size in (32, 64, 128) for hp in draws)


def test_the_lr_range_is_generation_zeros():
    """PBT perturbs the lr itself; lr_anneal only scales the range generation 0 draws from (its start)."""
    sgd = {"optimizers": {"sgd": POOL["sgd"]}, "lr_anneal": {"start": 0.5, "end": 0.01}}
    fresh = parse_spec({"mode": "pbt", "generations": 50, "pbt": {"resample": 1.0}, "sgd": sgd})
    assert all(0.005 <= hp.lr <= 0.5 for hp in explored(fresh, n=300))
    perturbed = parse_spec({"mode": "pbt", "pbt": {"resample": 0.0, "factors": [1.2]}, "sgd": sgd})
    assert {hp.lr for hp in explored(perturbed, replace(SGD, lr=0.45), n=5)} == {0.5}


# The spec ---------------------------------------------------------------------------------------


def test_the_pbt_section_defaults_and_run_ids():
    s = load_spec("mode: pbt")
    assert (s.pbt.quantile, s.pbt.resample, s.pbt.factors) == (0.25, 0.25, [0.8, 1.2])
    assert "pbt" not in load_spec("{}").model_dump(mode="json")  # the other modes keep their run ids
    assert with_mode(s, "esgd").pbt is None and with_mode(load_spec("{}"), "pbt").pbt == s.pbt


@pytest.mark.parametrize(
    "text, message",
    [
        ("pbt: {quantile: 0.3}", "pbt: only mode pbt reads this section (mode is esgd)"),
        ("mode: population\npbt: {}", "pbt: only mode pbt reads this section (mode is population)"),
        ("mode: pbt\npbt: {quantile: 0.6}", "pbt.quantile: Input should be less than or equal to 0.5"),
        ("mode: pbt\npbt: {quantile: 0}", "pbt.quantile: Input should be greater than 0"),
        ("mode: pbt\npbt: {factors: [1.2, -0.8]}", "pbt.factors.1: Input should be greater than 0"),
        ("mode: pbt\npbt: {factors: [0]}", "pbt.factors.0: Input should be greater than 0"),
        ("mode: pbt\npbt: {resample: 1.5}", "pbt.resample: Input should be less than or equal to 1"),
        ("mode: pbt\npbt: {explore: 2}", "pbt.explore: Extra inputs are not permitted"),
    ],
)
def test_a_bad_pbt_section_is_one_line(text, message, tmp_path, capsys):
    with pytest.raises(SpecError, match="^" + re.escape(message)):
        load_spec(text)
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    code, out, err = run_cli(capsys, "run", str(path), "--store", str(tmp_path / "store"))
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and message in err
    assert not (tmp_path / "store").exists() or not list((tmp_path / "store").rglob("*.parquet"))


def test_compare_accepts_pbt_but_runs_the_papers_four_by_default():
    assert MODES == ("single", "population", "no-evolution", "esgd") and parse_modes(None) == MODES
    assert parse_modes("esgd,pbt") == ("esgd", "pbt")
    with pytest.raises(SpecError, match="choose from single, population, no-evolution, esgd, pbt"):
        parse_modes("ray")


# Tiny runs end to end ---------------------------------------------------------------------------

PBT = tiny(
    mode="pbt",
    generations=4,
    seed=3,
    pbt={"quantile": 0.5},
    finetune={"epochs": 1},
    pack={"size": 1},  # one at a time: a replay repeats the run exactly
)


@pytest.fixture(scope="module")
def pbt_run(tmp_path_factory):
    run = start(str(tmp_path_factory.mktemp("pbt")), PBT, "pbt")
    execute(run)
    return run


def test_same_spec_same_history_bytes(pbt_run):
    again = start(pbt_run.store.uri, PBT, "pbt-again")
    execute(again)
    for part in range(pbt_run.spec.generations + 1):  # history.parquet's metadata names its parts' keys (run ids)
        key = keys.history_part
        assert again.store.get(key(again.id, part)) == pbt_run.store.get(key(pbt_run.id, part))
    assert history(again.uri) == history(pbt_run.uri)


def test_copies_hold_their_donors_checkpoints_and_train_with_explored_hparams(pbt_run):
    run, copies = pbt_run, 0
    for g in range(run.spec.generations):
        after = read_rows(run.store, keys.parents(run.id, g + 1), Member)
        trained = {
            m.member: run.store.read(keys.train_record(run.id, g, m.member), TrainRecord)
            for m in read_rows(run.store, keys.parents(run.id, g), Member)
        }
        made = [m for m in after if m.role == pbt.COPY]
        assert len(made) == 2  # µ = 4, quantile 0.5
        worst = sorted(trained, key=lambda name: trained[name].fitness)[2:]
        assert not set(worst) & {m.member for m in after}  # the bottom half was replaced
        for m in made:
            donor = trained[m.parents[0]]
            assert m.checkpoint == donor.checkpoint and m.fitness == donor.fitness  # the donor's, no new blob
            assert m.hparams != donor.hparams  # explored
            if g + 1 < run.spec.generations:  # it trains next with what the manifest says
                record = run.store.read(keys.train_record(run.id, g + 1, m.member), TrainRecord)
                assert record.hparams == m.hparams and record.fitness_before == donor.fitness
        kept = [m for m in after if m.role != pbt.COPY]
        assert all(m.hparams == trained[m.member].hparams for m in kept)  # PBT's trials keep theirs
        copies += len(made)
    assert copies == 8


def test_the_history_says_who_copied_whom_and_the_best_never_gets_worse(pbt_run):
    rows = history(pbt_run.uri)
    for r in (r for r in rows if r["role"] == pbt.COPY):
        donor = next(d for d in rows if d["generation"] == r["generation"] and d["member"] == r["parents"][0])
        assert r["fitness"] == donor["fitness"] and r["round"] == 0 and r["selected"] and r["sigma"] is None
        assert r["optimizer"] is not None  # its explored hyper-parameters
    summaries = summarize(rows, pbt_run.spec.m)
    assert [s["phase"] for s in summaries] == ["exploit"] * 4 + ["finetune"]
    best = [s["best"] for s in summaries[:4]]
    elite_mean = [s["elite_mean"] for s in summaries[:4]]
    assert all(b <= a for a, b in zip(best, best[1:])) and all(b <= a for a, b in zip(elite_mean, elite_mean[1:]))
    assert all(r["fitness"] <= r["fitness_before"] for r in rows if r["role"] == "parent")  # strict back-off


def test_report_lineage_replay_export_and_verify_read_a_pbt_run(pbt_run, tmp_path, capsys):
    code, out, err = run_cli(capsys, "report", pbt_run.uri, "--json")
    assert code == 0, err
    assert [json.loads(line)["phase"] for line in out.splitlines()][:4] == ["exploit"] * 4
    rows = history(pbt_run.uri)
    copy = max((r for r in rows if r["role"] == pbt.COPY), key=lambda r: r["generation"])
    code, out, err = run_cli(capsys, "lineage", pbt_run.uri, copy["member"])
    assert code == 0, err
    assert f"copied {copy['parents'][0]}'s weights (PBT exploit)" in out and "PBT copies" in out
    code, out, err = run_cli(capsys, "lineage", pbt_run.uri, "--json")
    assert code == 0 and json.loads(out)["line"][0].startswith("init-")
    steps, _, lin = replay(pbt_run, copy["member"])  # a copy is exact: its line replays the run bit for bit
    assert lin.line[-2:] == [copy["parents"][0], copy["member"]] and len(steps) == pbt_run.spec.generations + 1
    assert all(s["replay_fitness"] == s["run_fitness"] and s["replay_backoffs"] == s["run_backoffs"] for s in steps)
    for generation in range(pbt_run.spec.generations + 1):  # every part made again from the records is the same
        made = stored.part_rows(pbt_run.store, pbt_run.id, pbt_run.spec, generation)
        written = read_table(pbt_run.store.get(keys.history_part(pbt_run.id, generation)), HistoryRow)
        assert written.to_pylist() == read_table(to_parquet(made, HistoryRow), HistoryRow).to_pylist()
    code, out, err = run_cli(capsys, "verify", pbt_run.uri)
    assert code == 0 and "healthy" in out + err


def test_extending_a_pbt_run_is_the_straight_run(tmp_path, capsys):
    """PBT's draws do not depend on K (no annealing past generation 0), so 2 generations extended to 3
    give the history of a 3-generation run."""
    data = tiny(mode="pbt", generations=2, sgd={"epochs": 1, "batch_size": [64]})
    short = start(str(tmp_path), data, "ext")
    execute(short)
    extended = start(str(tmp_path), {**data, "generations": 3}, "ext")
    execute(extended)
    straight = start(str(tmp_path), {**data, "generations": 3}, "straight")
    execute(straight)
    assert history(extended.uri) == history(straight.uri)
    # a copy of the last generation, stored only as its donor's checkpoint, exports
    copy = next(r for r in history(straight.uri) if r["role"] == pbt.COPY and r["generation"] == 2)
    out = tmp_path / "copy.safetensors"
    code, _, err = run_cli(capsys, "export", straight.uri, copy["member"], "--out", str(out))
    assert code == 0, err
    written = json.loads(out.with_suffix(".json").read_text())
    donor = straight.store.read(keys.train_record(straight.id, 2, copy["parents"][0]), TrainRecord)
    assert written["fitness"] == copy["fitness"] and written["weights"]["checkpoint"]["key"] == donor.checkpoint.key


def test_a_population_of_one_is_plain_sgd(tmp_path):
    run = start(str(tmp_path), tiny(mode="pbt", generations=2, population={"mu": 1, "rho": 1, "elite": 1}), "one")
    execute(run)
    rows = history(run.uri)
    assert all(r["role"] == "parent" for r in rows) and {r["member"] for r in rows} == {"init-000"}
    assert [s["phase"] for s in summarize(rows, 1)] == ["sgd", "sgd"]


def test_compare_runs_pbt_beside_a_paper_mode(tmp_path, capsys):
    path = write_spec(tmp_path / "spec.yaml", tiny(mode="pbt", generations=1, pbt={"quantile": 0.5}))
    args = ["compare", path, "--store", str(tmp_path / "s"), "--modes", "population,pbt", "--json", "--quiet"]
    code, out, err = run_cli(capsys, *args, "--out", str(tmp_path / "p"))
    assert code == 0, err
    assert [json.loads(line)["mode"] for line in out.splitlines()] == ["population", "pbt"]


def test_the_argo_engine_runs_pbt_unchanged(tmp_path):
    """No new worker command: the Workflows of a pbt run, executed by the Argo emulator, give the
    history of the in-process run (one individual at a time in both, so that they round alike)."""
    from esgd.controller.runs import create_or_resume
    from esgd.store.uri import open_store

    from test_controller_argo import FakeWorkflows, controller

    data = tiny(mode="pbt", generations=2, pbt={"quantile": 0.5}, pack={"size": 1}, sgd={"epochs": 1})
    local = start(str(tmp_path / "local"), data, "local")
    execute(local)
    argo, _ = create_or_resume(open_store(str(tmp_path / "argo")), parse_spec(data), "argo")
    fake = FakeWorkflows()
    controller(fake, argo).drive()
    assert {argv[1] for argv in fake.commands} == {"init", "train", "select", "finish"}
    rows = history(argo.uri)
    assert rows == history(local.uri) and any(r["role"] == pbt.COPY for r in rows)
