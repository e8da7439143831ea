"""Extending a run (issue 13, item 9): a spec that differs from a run's frozen spec only in a raised
`generations` continues the run from its last committed generation. The committed generations stay
as they were, bit for bit; the final stages run again after the new generations; the extension is
deterministic, whenever the run stopped and whatever crashed during the extension itself."""

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from esgd.controller import local
from esgd.controller.driver import Driver
from esgd.controller.local import InProcess
from esgd.controller.runs import create_or_resume
from esgd.core import hparams, keys
from esgd.core.errors import InputError
from esgd.core.plan import Step
from esgd.core.records import ExtensionRecord, FinalSummary
from esgd.core.schedules import value_at
from esgd.core.spec import SpecError, parse_spec
from esgd.store.base import StoreError
from esgd.store.local import LocalStore
from esgd.store.lock import held
from esgd.store.run import RunRef, frozen_spec
from esgd.store.uri import open_store
from esgd.worker import steps

from helpers import all_steps, history, merge, run_cli, small, start, write_spec

RUN = "ext"
BEFORE, AFTER = 2, 4
# annealed lr range and σ, hyper-parameters redrawn every generation (the paper's settings)
DATA = small(
    generations=BEFORE,
    finetune={"epochs": 1},
    sgd={"lr_anneal": {"start": 1.0, "end": 0.1}, "hparams": "redraw"},
)


def extended(data: dict, generations: int) -> dict:
    return merge(data, {"generations": generations})


def execute(store, data: dict, run_id: str = RUN) -> RunRef:
    run, _ = create_or_resume(store, parse_spec(data), run_id)
    local.execute(run, "cpu", progress=lambda line: None)
    return run


def committed_objects(root: Path, generations: int) -> dict[str, bytes]:
    """Every object of the first `generations` generations of run RUN (and its initial population),
    as bytes: what an extension must leave exactly as it was."""
    run = root / "runs" / RUN
    kept = [run / "init", *(run / f"gen-{g:04d}" for g in range(generations))]
    kept += [run / f"gen-{generations:04d}" / "parents.parquet"]
    kept += [run / "history" / f"gen-{g:04d}.parquet" for g in range(generations)]
    files = [p for k in kept for p in ([k] if k.is_file() else sorted(k.rglob("*")))]
    return {str(p.relative_to(root)): p.read_bytes() for p in files if p.is_file()}


def uri(root: Path) -> str:
    return f"{root}/runs/{RUN}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A finished 2-generation run (with fine-tuning), and two copies of it extended to 4
    generations: one through the API, one through `esgd run --set generations=4 --run-id`."""
    root = tmp_path_factory.mktemp("extend")
    execute(open_store(str(root / "original")), DATA)
    for name in ("a", "b"):
        shutil.copytree(root / "original", root / name)
    execute(open_store(str(root / "a")), extended(DATA, AFTER))
    return root


def test_extending_a_finished_run_twice_from_copies_gives_one_history_that_keeps_the_past(runs, tmp_path, capsys):
    spec = write_spec(tmp_path / "spec.yaml", DATA)
    code, out, err = run_cli(
        capsys,
        "run",
        spec,
        "--store",
        str(runs / "b"),
        "--run-id",
        RUN,
        "--set",
        f"generations={AFTER}",
        "--device",
        "cpu",
    )
    assert code == 0, err
    assert out == f"{LocalStore(runs / 'b').uri}/runs/{RUN}"
    original, a, b = (history(uri(runs / name)) for name in ("original", "a", "b"))
    assert a == b  # deterministic
    assert [r for r in original if r["role"] != "finetune"] == [r for r in a if r["generation"] < BEFORE]
    assert sorted({r["generation"] for r in a}) == list(range(AFTER + 1))
    assert {r["generation"] for r in a if r["role"] == "finetune"} == {AFTER}  # the old final stages are gone
    assert committed_objects(runs / "original", BEFORE) == committed_objects(runs / "a", BEFORE)  # bit for bit
    for name in ("a", "b"):
        store = open_store(str(runs / name))
        assert frozen_spec(store, RUN) == parse_spec(extended(DATA, AFTER))
        assert store.read(keys.final_summary(RUN), FinalSummary).best_member in {r["member"] for r in a}
        text = store.get(keys.spec(RUN)).decode()
        assert text.startswith("# frozen by esgd ") and f"# extended from {BEFORE} to {AFTER} generations" in text
        record = store.read(keys.extension(RUN, AFTER), ExtensionRecord)  # its checksum checked
        assert record == ExtensionRecord(before=BEFORE, after=AFTER, committed=BEFORE)


def test_the_new_generations_follow_the_schedules_over_the_new_number_of_generations(runs):
    """Documented continuation (docs/method.md, "Extending a run"): generations before the extension
    keep the values annealed over the old K, the new ones take those of the new K."""
    old, new = parse_spec(DATA), parse_spec(extended(DATA, AFTER))
    rows = history(uri(runs / "a"))
    for row in rows:
        spec = old if row["generation"] < BEFORE else new
        if row["role"] == "offspring":
            assert row["sigma"] == value_at(spec.evolution.sigma, row["generation"], spec.generations)
        if row["role"] == "parent":
            assert row["lr"] == hparams.draw(spec, row["generation"], row["member"]).lr
    assert value_at(new.evolution.sigma, BEFORE, AFTER) > value_at(old.evolution.sigma, BEFORE - 1, BEFORE)


def test_with_constant_schedules_an_extension_is_the_straight_run(tmp_path):
    data = merge(small(generations=1, finetune={"epochs": 1}), {"sgd": {"lr_anneal": {"start": 1.0}}})
    data = merge(data, {"evolution": {"sigma": {"start": 0.01}}})
    execute(open_store(str(tmp_path / "ext")), data)
    execute(open_store(str(tmp_path / "ext")), extended(data, 2))
    execute(open_store(str(tmp_path / "straight")), extended(data, 2))
    assert history(uri(tmp_path / "ext")) == history(uri(tmp_path / "straight"))
    ext, straight = (
        open_store(str(tmp_path / n)).read(keys.final_summary(RUN), FinalSummary) for n in ("ext", "straight")
    )
    same = ("best_member", "best_fitness", "metric")
    assert [getattr(ext, f) for f in same] == [getattr(straight, f) for f in same]
    assert ext.checkpoint.sha256 == straight.checkpoint.sha256  # the same weights (under attempt-unique keys)


def test_a_generation_in_progress_is_started_again_with_the_new_generations(tmp_path):
    """Where the run stopped does not change the extension: partial work on generation 1 (trained
    with the lr range of the old K) is removed, as if the run had stopped right after generation 0."""
    data = small(generations=2)
    run = start(str(tmp_path / "partial"), data, RUN)
    plan = all_steps(run.spec, pack=2)
    for step in plan[: plan.index(Step("train", 1, members=(0, 2))) + 1]:
        steps.run(run, step)
    boundary = start(str(tmp_path / "boundary"), data, RUN)
    for step in plan[: plan.index(Step("train", 1, members=(0, 2)))]:
        steps.run(boundary, step)
    assert (tmp_path / "partial" / "runs" / RUN / "gen-0001" / "train").is_dir()
    for name in ("partial", "boundary"):
        execute(open_store(str(tmp_path / name)), extended(data, 3))
    assert history(uri(tmp_path / "partial")) == history(uri(tmp_path / "boundary"))


class Crash(Exception):
    pass


class Crashing(LocalStore):
    """A local store whose process dies after `writes` writes or removals."""

    def __init__(self, root, writes: int):
        super().__init__(root)
        self.left = writes

    def _tick(self) -> None:
        if self.left == 0:
            raise Crash
        self.left -= 1

    def put(self, key: str, data: bytes) -> None:
        self._tick()
        super().put(key, data)

    def delete(self, key: str) -> None:
        self._tick()
        super().delete(key)


@pytest.mark.parametrize("writes", [1, 13])  # the final commit removed; everything but the frozen spec done
def test_a_crash_during_an_extension_leaves_a_run_that_either_spec_continues(runs, tmp_path, writes):
    for name in ("old", "new"):
        shutil.copytree(runs / "original", tmp_path / name)
        with pytest.raises(Crash):
            create_or_resume(Crashing(tmp_path / name, writes), parse_spec(extended(DATA, AFTER)), RUN)
        assert frozen_spec(open_store(str(tmp_path / name)), RUN).generations == BEFORE
    execute(open_store(str(tmp_path / "old")), DATA)  # the old spec finishes the old run again
    assert history(uri(tmp_path / "old")) == history(uri(runs / "original"))
    execute(open_store(str(tmp_path / "new")), extended(DATA, AFTER))
    assert history(uri(tmp_path / "new")) == history(uri(runs / "a"))


def test_a_lower_generations_or_another_field_is_refused_naming_a_free_id(runs, tmp_path, monkeypatch):
    shutil.copytree(runs / "a", tmp_path / "s")
    (tmp_path / "s" / "runs" / f"{RUN}-2").mkdir()  # an id taken already
    (tmp_path / "s" / "runs" / f"{RUN}-2" / "spec.yaml").write_text("{}")
    before = {p: p.read_bytes() for p in sorted((tmp_path / "s").rglob("*")) if p.is_file()}
    store = open_store(str(tmp_path / "s"))
    with pytest.raises(SpecError, match=rf"run {RUN} has {AFTER} generations: .* lowering it is not possible") as e:
        create_or_resume(store, parse_spec(extended(DATA, 3)), RUN)
    assert str(e.value).endswith(f"--run-id {RUN}-3")
    monkeypatch.setenv("ESGD_RUN_ID_HINT", "make demo RUN_ID={}")
    with pytest.raises(SpecError, match=r"different spec \(seed\); only a raised `generations`") as e:
        create_or_resume(store, parse_spec(merge(extended(DATA, AFTER), {"seed": 8})), RUN)
    assert str(e.value).endswith(f"make demo RUN_ID={RUN}-3")
    assert {p: p.read_bytes() for p in sorted((tmp_path / "s").rglob("*")) if p.is_file()} == before


def test_the_final_stages_of_an_extended_run_get_workflow_names_of_their_own(runs):
    """The Argo engine finds Workflows by name: the final stages the run had before its extension
    (a Succeeded Workflow kept until its TTL) must not be taken for the new ones."""
    for name, tag in (("original", "final"), ("a", f"final-k{AFTER:04d}")):
        run = RunRef.open(uri(runs / name))
        assert Driver(run, InProcess("cpu")).plan()[-1].tag == tag


def test_an_invalid_run_id_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(InputError, match="a run id is"):
        create_or_resume(open_store(str(tmp_path / "s")), parse_spec(DATA), "a/b")
    assert not (tmp_path / "s").exists()


def test_extending_on_s3(runs, s3_uri):
    store = open_store(s3_uri)
    execute(store, DATA)
    execute(store, extended(DATA, AFTER))
    assert history(f"{s3_uri}/runs/{RUN}") == history(uri(runs / "a"))
    assert store.exists(keys.final_manifest(RUN)) and store.exists(keys.extension(RUN, AFTER))


def test_on_argo_the_old_final_workflow_is_not_taken_for_the_extended_runs(tmp_path):
    """Extended within the TTL of its final Workflow (Succeeded, kept): the controller submits the
    new final stages under a name of their own instead of stopping on "ran but not committed"."""
    from test_controller_argo import FakeWorkflows, controller

    data = small(generations=1, finetune={"epochs": 1}, device="cpu")
    store = open_store(str(tmp_path / "store"))
    fake = FakeWorkflows()
    controller(fake, create_or_resume(store, parse_spec(data), RUN)[0]).drive()
    controller(fake, create_or_resume(store, parse_spec(extended(data, 2)), RUN)[0]).drive()
    names = [body["metadata"]["name"] for _, body in fake.created]
    assert names == [f"{RUN}-g0000-a0", f"{RUN}-final-a0", f"{RUN}-g0001-a0", f"{RUN}-final-k0002-a0"]
    rows = history(f"{store.uri}/runs/{RUN}")
    assert {r["generation"] for r in rows if r["role"] == "finetune"} == {2} and store.exists(keys.final_manifest(RUN))


# One extension at a time (store/lock.py) ------------------------------------------------------------


class Pausing(LocalStore):
    """A local store whose first removal waits until the test lets it go on."""

    def __init__(self, root, reached: threading.Event, go: threading.Event):
        super().__init__(root)
        self.reached, self.go = reached, go

    def delete(self, key: str) -> None:
        if not self.reached.is_set():
            self.reached.set()
            assert self.go.wait(60)
        super().delete(key)


class Counting(LocalStore):
    def __init__(self, root):
        super().__init__(root)
        self.removed: list[str] = []

    def delete(self, key: str) -> None:
        self.removed.append(key)
        super().delete(key)


def test_a_second_extension_waits_for_the_first_and_removes_nothing(runs, tmp_path):
    """Two `esgd run` of the raised spec at once: the second waits for the first (which here stops
    midway until let go), then finds the run extended and only resumes it; the run ends as one
    extension makes it."""
    shutil.copytree(runs / "original", tmp_path / "s")
    spec = parse_spec(extended(DATA, AFTER))
    reached, go = threading.Event(), threading.Event()
    first = threading.Thread(target=create_or_resume, args=(Pausing(tmp_path / "s", reached, go), spec, RUN))
    first.start()
    assert reached.wait(60)  # the first holds the lock and is removing the final stages
    second_store = Counting(tmp_path / "s")
    second = threading.Thread(target=create_or_resume, args=(second_store, spec, RUN))
    second.start()
    second.join(1.0)
    assert second.is_alive()  # waiting for the lock
    go.set()
    first.join(60)
    second.join(60)
    assert not first.is_alive() and not second.is_alive()
    assert second_store.removed == [keys.extension_lock(RUN)]  # its own lock, nothing of the run
    execute(open_store(str(tmp_path / "s")), extended(DATA, AFTER))
    assert history(uri(tmp_path / "s")) == history(uri(runs / "a"))


def test_a_dead_holders_lock_is_taken_over(runs, tmp_path):
    """A lock left by a process that was killed (here: one that has exited) does not stop the run."""
    shutil.copytree(runs / "original", tmp_path / "s")
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    holder = {"host": socket.gethostname(), "pid": int(gone.stdout), "token": "x", "since": time.time()}
    (tmp_path / "s" / keys.extension_lock(RUN)).parent.mkdir(parents=True)
    (tmp_path / "s" / keys.extension_lock(RUN)).write_text(json.dumps(holder))
    execute(open_store(str(tmp_path / "s")), extended(DATA, AFTER))
    assert history(uri(tmp_path / "s")) == history(uri(runs / "a"))
    assert not (tmp_path / "s" / keys.extension_lock(RUN)).exists()


def test_a_lock_held_elsewhere_is_waited_for_until_it_is_stale(tmp_path):
    store = LocalStore(tmp_path)
    store.put("lock.json", json.dumps({"host": "elsewhere", "pid": 1, "since": time.time()}).encode())
    began = time.monotonic()
    with held(store, "lock.json", "a test", stale=0.5, poll=0.05):
        assert json.loads(store.get("lock.json"))["host"] == socket.gethostname()
        waited = time.monotonic() - began
    assert waited >= 0.4 and not store.exists("lock.json")


def test_a_live_holder_on_this_host_that_never_lets_go_is_one_line(tmp_path):
    store = LocalStore(tmp_path)
    holder = {"host": socket.gethostname(), "pid": os.getppid(), "token": "x", "since": time.time()}
    store.put("lock.json", json.dumps(holder).encode())
    with pytest.raises(StoreError, match=r"a test has waited 0 s for .*lock.json \(held by .* pid \d+\); if no esgd"):
        with held(store, "lock.json", "a test", stale=0.2, poll=0.05):
            pass
    assert json.loads(store.get("lock.json")) == holder  # a live holder's lock is left alone
