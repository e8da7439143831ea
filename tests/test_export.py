"""`esgd export` (issue 13, "Exporting the winner"): the weights as safetensors, which PyTorch
loads without esgd, checked against the stored checksum on the way out, plus the lineage as JSON."""

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from esgd.analysis.export import _bfloat16, safetensors_bytes, tensors
from esgd.core import keys
from esgd.core.records import FinalSummary, TrainRecord
from esgd.store import checkpoint
from esgd.store.checkpoint import Entry, Layout
from esgd.store.run import RunRef
from esgd.store.uri import open_store
from esgd.worker.run import Run
from esgd.worker.train import fitness
from esgd.worker.weights import load_into

from helpers import execute, history, run_cli, small, start

RUN = "exp"
TORCH = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "I64": torch.int64}


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """A safetensors file read with torch alone, by its documented layout."""
    raw = path.read_bytes()
    size = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + size])
    metadata = header.pop("__metadata__")
    body = raw[8 + size :]
    assert sorted(b for v in header.values() for b in v["data_offsets"])[-1] == len(body)  # no trailing bytes
    out = {
        name: torch.frombuffer(bytearray(body[slice(*v["data_offsets"])]), dtype=TORCH[v["dtype"]]).reshape(v["shape"])
        for name, v in header.items()
    }
    return out, metadata


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> str:
    """A finished run of an MLP with BatchNorm (float buffers and an integer one), fine-tuned."""
    root = tmp_path_factory.mktemp("export")
    run = start(str(root / "store"), small(task_args={"hidden": 8, "batchnorm": True}, finetune={"epochs": 1}), RUN)
    execute(run)
    return run.uri


def model_of(run_uri: str, state: dict[str, torch.Tensor]) -> tuple[torch.nn.Module, Run]:
    run = Run(RunRef.open(run_uri), "cpu")
    model = run.task.model()
    model.load_state_dict(state)
    return model, run


def test_the_winner_loads_into_a_plain_torch_model_with_its_fitness(finished, tmp_path, capsys):
    out = tmp_path / "winner.safetensors"
    code, stdout, err = run_cli(capsys, "export", finished, "--out", str(out))
    assert code == 0, err
    assert stdout.splitlines() == [str(out), str(tmp_path / "winner.json")]
    state, metadata = read_safetensors(out)
    assert state["1.num_batches_tracked"].dtype == torch.int64 and "1.running_var" in state
    model, run = model_of(finished, state)
    summary = run.store.read(keys.final_summary(RUN), FinalSummary)
    assert fitness(model, run.task, run.fitness_data) == summary.best_fitness
    reference = run.task.model()
    load_into(reference, *checkpoint.decode(run.store.get(summary.checkpoint.key)))
    assert all(torch.equal(state[k], v) for k, v in reference.state_dict().items())
    assert metadata == {
        "format": "pt",
        "esgd.run": finished,
        "esgd.member": summary.best_member,
        "esgd.checkpoint": summary.checkpoint.sha256,
    }
    doc = json.loads((tmp_path / "winner.json").read_text())
    assert doc["member"] == summary.best_member and doc["winner"] and doc["finished"]
    assert doc["fitness"] == summary.best_fitness and doc["metric"] == summary.metric
    assert doc["task"] == "esgd.worker.tasks.digits:task" and doc["task_args"]["batchnorm"] is True
    schedule = doc["lineage"]["schedule"]
    assert schedule[-1]["role"] == "finetune" and {"optimizer", "lr", "batch_size"} <= schedule[0].keys()


def test_the_safetensors_library_reads_it(finished, tmp_path, capsys):
    st = pytest.importorskip("safetensors.torch")
    out = tmp_path / "w.safetensors"
    assert run_cli(capsys, "export", finished, "--out", str(out))[0] == 0
    ours, _ = read_safetensors(out)
    theirs = st.load_file(str(out))
    assert theirs.keys() == ours.keys() and all(torch.equal(theirs[k], ours[k]) for k in ours)


def test_a_named_member_that_did_not_survive_is_exported_as_last_stored(finished, tmp_path, capsys):
    rows = history(finished)
    final = {r["member"] for r in rows if r["role"] == "finetune"}
    gone = next(r for r in rows if r["role"] == "parent" and r["member"] not in final)
    last = max((r for r in rows if r["member"] == gone["member"]), key=lambda r: (r["generation"], r["round"]))
    out = tmp_path / "gone.safetensors"
    code, _, err = run_cli(capsys, "export", finished, gone["member"], "--out", str(out))
    assert code == 0, err
    state = read_safetensors(out)[0]
    model, run = model_of(finished, state)
    record = run.store.read(keys.train_record(RUN, last["generation"], gone["member"]), TrainRecord)
    stored = run.task.model()
    load_into(stored, *checkpoint.decode(run.store.get(record.checkpoint.key)))
    assert all(torch.equal(state[k], v) for k, v in stored.state_dict().items())
    assert fitness(model, run.task, run.fitness_data) == pytest.approx(record.fitness, rel=1e-6)  # trained packed
    assert record.fitness == last["fitness"]
    doc = json.loads(out.with_suffix(".json").read_text())
    assert not doc["winner"] and doc["stored_as"] == {"role": "parent", "generation": last["generation"]}


def test_a_damaged_checkpoint_is_refused_naming_its_key_and_nothing_is_written(finished, tmp_path, capsys):
    import shutil

    store_path = Path(open_store(finished.rsplit("/runs/", 1)[0]).root)
    copy = tmp_path / "store"
    shutil.copytree(store_path, copy)
    store = open_store(str(copy))
    key = store.read(keys.final_summary(RUN), FinalSummary).checkpoint.key
    data = bytearray((copy / key).read_bytes())
    data[-40] ^= 0xFF
    (copy / key).write_bytes(bytes(data))
    out = tmp_path / "out" / "w.safetensors"
    out.parent.mkdir()
    code, stdout, err = run_cli(capsys, "export", f"{copy}/runs/{RUN}", "--out", str(out))
    assert code == 2 and stdout == ""
    assert len(err.strip().splitlines()) == 1
    assert err.startswith(f"esgd: error: checksum mismatch for {key}: the object is truncated or altered")
    assert list(out.parent.iterdir()) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--out", "{tmp}"], "is a directory; name the weights file"),
        (["--out", "{tmp}/missing/w.safetensors"], "does not exist"),
        (["--out", "{tmp}/w.json"], "name the weights file (e.g. winner.safetensors)"),
        (["nobody", "--out", "{tmp}/w.safetensors"], "member 'nobody' is not in the run's history"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(finished, tmp_path, capsys, args, message):
    code, stdout, err = run_cli(capsys, "export", finished, *[a.format(tmp=tmp_path) for a in args])
    assert code == 2 and stdout == "" and len(err.strip().splitlines()) == 1 and message in err
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_a_run_that_does_not_exist(tmp_path, capsys):
    code, _, err = run_cli(capsys, "export", f"{tmp_path}/runs/nope", "--out", str(tmp_path / "w.safetensors"))
    assert code == 2 and "no run at" in err


def test_an_unfinished_run_exports_its_best_survivor(tmp_path, capsys):
    from esgd.worker import steps

    from helpers import all_steps

    run = start(str(tmp_path / "store"), small(), RUN)
    plan = all_steps(run.spec, pack=4)
    for step in plan[: [s.command for s in plan].index("finish")]:
        steps.run(run, step)
    out = tmp_path / "w.safetensors"
    assert run_cli(capsys, "export", run.uri, "--out", str(out))[0] == 0
    doc = json.loads(out.with_suffix(".json").read_text())
    rows = [r for r in history(run.uri) if r["generation"] == run.spec.generations - 1 and r["selected"]]
    assert not doc["finished"] and doc["member"] == min(rows, key=lambda r: r["fitness"])["member"]


def dtypes_round_trip(layout: Layout, vector: np.ndarray) -> dict[str, torch.Tensor]:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "dtypes.safetensors"
        path.write_bytes(safetensors_bytes(tensors(layout, vector), {"format": "pt"}))
        return read_safetensors(path)[0]


def test_every_float_dtype_is_written_as_torch_would_convert_it():
    rng = np.random.default_rng(0)
    values = rng.standard_normal(64).astype(np.float32)
    values[:6] = [np.nan, np.inf, -np.inf, 0.0, -0.0, 1.00390625]  # 1 + 2^-8: a tie, to even
    values[6] = np.float32(1.0) + np.float32(3 * 2**-9)  # above the tie: rounds up
    entries = [Entry("a", [64], "bfloat16", "param", 0), Entry("b", [8, 8], "float16", "param", 64)]
    layout = Layout(entries, {"n": {"shape": [], "dtype": "int64", "values": [7]}}, "float32")
    state = dtypes_round_trip(layout, np.concatenate([values, values]))
    source = torch.from_numpy(values)
    for name, dtype, shape in (("a", torch.bfloat16, [64]), ("b", torch.float16, [8, 8])):
        expected = source.to(dtype).reshape(shape)
        got = state[name].reshape(-1)
        assert torch.equal(got.isnan(), expected.reshape(-1).isnan())  # the bits of a NaN may differ
        assert torch.equal(got[1:].view(torch.int16), expected.reshape(-1)[1:].view(torch.int16))  # the rest exactly
    assert state["n"].item() == 7 and state["n"].shape == ()
    wide = Layout([Entry("c", [2, 2], "float64", "buffer", 0)], {}, "float64")
    third = np.arange(4, dtype=np.float64) / 3
    assert torch.equal(dtypes_round_trip(wide, third)["c"], torch.from_numpy(third).reshape(2, 2))
    assert _bfloat16(np.array([np.nan], dtype=np.float32))[0] & 0x7FC0 == 0x7FC0
