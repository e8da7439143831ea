"""The paper's recipes, CPU-sized, end to end through `esgd run` on every store backend: CIFAR-10
with ResNet-20, the acoustic-model DNN, the PTB LSTM (with a reference model and relaxed
back-off); plus the second bundled real dataset (breast cancer)."""

import math
from pathlib import Path

import pytest
import torch

from esgd.cli.main import main
from esgd.core import keys
from esgd.core.records import FinalSummary
from esgd.store import checkpoint
from esgd.store.blobs import Blobs
from esgd.store.uri import open_run, open_store
from esgd.worker.data.imports import run_import
from esgd.worker.tasks import resnet, toy

from helpers import history
from test_data_import import fake_cifar, fake_ptb, fake_speech

TINY = Path(__file__).resolve().parents[1] / "examples" / "tiny"


def run_recipe(capsys, spec: str, store_uri: str, data: str, *extra: str) -> str:
    code = main(["run", str(TINY / spec), "--store", store_uri, "--set", f"task_args.data={data}", *extra])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out.strip()


def final(uri: str) -> FinalSummary:
    store, run_id = open_run(uri)
    return store.read(keys.final_summary(run_id), FinalSummary)


def test_resnet20_is_the_standard_cifar_resnet():
    model = resnet.resnet(20)
    assert sum(p.numel() for p in model.parameters()) == 269_722  # 0.27 M, as in He et al.
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 19 and {c.out_channels for c in convs} == {16, 32, 64}
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) == 19
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(TypeError, match="6n\\+2"):
        resnet.resnet(21)


def test_cifar10_resnet20_recipe(store_uri, tmp_path, capsys):
    fake_cifar(tmp_path / "src", per_batch=4)
    data, _ = run_import("cifar10", str(tmp_path / "src"), store_uri)
    uri = run_recipe(capsys, "cifar10-resnet20.yaml", store_uri, data)
    rows = history(uri)
    parents = [r for r in rows if r["role"] == "parent"]
    assert {r["generation"] for r in rows} == {0, 1} and len(parents) == 4
    assert all(r["optimizer"] == "nesterov" and r["weight_decay"] == 1e-4 and r["batch_size"] == 16 for r in parents)
    assert all(r["fitness"] <= r["fitness_before"] for r in parents)  # strict back-off
    summary = final(uri)
    assert summary.metric_name == "error rate" and 0 <= summary.metric <= 1
    store, _ = open_run(uri)
    layout = checkpoint.read_layout(Blobs(store).get(summary.checkpoint))
    params = sum(e.numel for e in layout.entries if e.kind == "param")
    assert params == 269_722 and any(e.name.endswith("running_var") and e.kind == "buffer" for e in layout.entries)


def test_speech_dnn_recipe(store_uri, tmp_path, capsys):
    fake_speech(tmp_path / "src")
    data, _ = run_import("speech", str(tmp_path / "src"), store_uri)
    uri = run_recipe(capsys, "speech-dnn.yaml", store_uri, data)
    rows = history(uri)
    start = min(r["fitness_before"] for r in rows if r["generation"] == 0 and r["role"] == "parent")
    best = final(uri)
    assert best.metric_name == "frame error rate" and best.best_fitness < start


def test_ptb_lstm_recipe_with_a_reference_model_and_relaxed_backoff(store_uri, tmp_path, capsys):
    fake_ptb(tmp_path / "src")
    data, _ = run_import("ptb", str(tmp_path / "src"), store_uri)
    # a trained model first: one generation of the single mode
    first = run_recipe(capsys, "ptb-lstm.yaml", store_uri, data, "--set", "mode=single", "--set", "generations=1")
    trained = final(first)
    reference = f"{open_store(store_uri).uri.rstrip('/')}/{trained.checkpoint.key}"
    uri = run_recipe(capsys, "ptb-lstm.yaml", store_uri, data, "--set", f"reference.checkpoint={reference}")
    rows = history(uri)
    refs = [r for r in rows if r["role"] == "reference"]
    assert [r["member"] for r in refs] == ["g0000-r0-ref", "g0001-r0-ref"]
    assert all(r["fitness"] == pytest.approx(trained.best_fitness) for r in refs)
    summary = final(uri)
    assert summary.best_fitness <= trained.best_fitness + 1e-9  # the reference is always in the pool
    assert summary.metric_name == "perplexity"
    assert summary.metric == pytest.approx(math.exp(summary.best_fitness), rel=1e-4)
    store, run_id = open_run(uri)  # relaxed back-off (its semantics: test_backoff.py; replayed: test_lineage.py)
    assert "backoff: 0.5" in store.get(keys.spec(run_id)).decode()


def test_breast_cancer_ships_with_scikit_learn():
    task = toy.task("breast_cancer")
    assert len(task.train[0]) == 398 and len(task.fitness[0]) == 171 and task.train[0].shape[1] == 30
    assert abs(float(task.train[0].mean())) < 0.05  # standardised with the training part's statistics
    assert toy.task("wine").train[0].shape[1] == 13
    with pytest.raises(TypeError, match="dataset must be one of"):
        toy.task("boston")
