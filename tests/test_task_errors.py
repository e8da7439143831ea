"""Errors in the user's task (issue 13, item 4): whatever the task's own code raises (its function,
model, loss, data, metric; SystemExit included) is one line naming the task and the exception,
exit code 2, before anything is written (`esgd run`) or in the run's first step (`esgd-worker
init`, the cluster's first pod); task_args that do not fit the signature are told apart from a
TypeError inside the task; the preflight mini-step catches a wrong loss or fitness set; batch sizes
are checked against the training set; $ESGD_TASK_ALLOW restricts the modules tasks come from."""

import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from esgd.cli.worker import main as worker
from esgd.controller.runs import create_or_resume
from esgd.core.plan import parse_range
from esgd.core.spec import parse_spec
from esgd.store.base import StoreUnavailable
from esgd.store.uri import open_store, run_uri
from esgd.worker import preflight
from esgd.worker.task import Task, TaskError, blamed_on, load_task
from esgd.worker.tasks.common import error_rate
from esgd.worker.tasks.mlp import mlp

from helpers import run_cli, tiny, write_spec

TESTS = Path(__file__).parent
EXAMPLES = 200


def _data(examples: int = EXAMPLES, features: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(examples, features, generator=g)
    return x, (x[:, 0] > 0).long()


class NoParameters(torch.nn.Module):
    def forward(self, x):
        return torch.stack([x[:, 0], -x[:, 0]], dim=1)


class RaisesInForward(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Linear(6, 2)

    def forward(self, x):
        if self.training:
            raise RuntimeError("this layer was never finished")
        return self.w(x)


def _no_model():
    raise ValueError("no such architecture: resnet7")


def _exit_in_loss(out, y):
    sys.exit(4)


def _bad_metric(out, y):
    raise KeyError("accuracy")


def _loss_of_small_batches(out, y):
    if torch.is_grad_enabled() and len(y) > 8:  # passes the preflight's mini-step (4 examples), fails in training
        raise ValueError("this loss was only written for batches of up to 8")
    return F.cross_entropy(out, y)


def _loss_with_item(out, y):
    scale = 1.0 + 0.0 * out.sum().item()  # a Python number mid-loss: fails under vmap (packed training)
    return F.cross_entropy(out, y) * scale


class RaisesOnManyExamples(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Linear(6, 2)

    def forward(self, x):
        if len(x) > 8:
            raise IndexError("this model was only tried on a few examples")
        return self.w(x)


def broken(kind: str = "none", examples: int = EXAMPLES) -> Task:
    """A task of this test file, broken in the way `kind` names (none: a working task)."""
    x, y = _data(examples)
    model, loss, fit, train, metric = partial(mlp, 6, 8, 2, 2), F.cross_entropy, (x[:50], y[:50]), (x, y), error_rate
    metric_of_fitness = None
    if kind == "type-error-inside":
        return torch.zeros(3) + "a"  # a TypeError raised inside the task, not by its call
    if kind == "runtime-error":
        raise RuntimeError("CUDA driver too old\nsecond line of detail")
    if kind == "exit":
        sys.exit(3)
    if kind == "exit-none":
        sys.exit()
    if kind == "interrupt":
        raise KeyboardInterrupt
    if kind == "store-outage":
        raise StoreUnavailable("cannot reach the S3 endpoint http://minio:9000: connection failed")
    if kind == "not-a-task":
        return {"model": model}
    if kind == "model-raises":
        model = _no_model
    elif kind == "model-not-a-module":
        model = partial(torch.zeros, 3)
    elif kind == "no-parameters":
        model = NoParameters
    elif kind == "forward-raises-in-training":
        model = RaisesInForward
    elif kind == "forward-raises-later":
        model = RaisesOnManyExamples
    elif kind == "loss-raises-later":
        loss = _loss_of_small_batches
    elif kind == "loss-item":
        loss = _loss_with_item
    elif kind == "loss-wrong-arity":
        loss = lambda out: out.mean()  # noqa: E731 - a loss of one argument
    elif kind == "loss-not-scalar":
        loss = partial(F.cross_entropy, reduction="none")
    elif kind == "loss-no-grad":
        loss = error_rate  # a metric used as the loss: argmax carries no gradient
    elif kind == "loss-nan":
        loss = lambda out, y: F.cross_entropy(out, y) * float("nan")  # noqa: E731
    elif kind == "loss-float":
        loss = lambda out, y: float(F.cross_entropy(out, y).detach())  # noqa: E731
    elif kind == "loss-exits":
        loss = _exit_in_loss
    elif kind == "fitness-wrong-features":
        fit = (torch.randn(50, 5), y[:50])
    elif kind == "fitness-wrong-targets":
        fit = (x[:50], y[:50] + 7)  # class 7 of a 2-class model
    elif kind == "fitness-empty":
        fit = (x[:0], y[:0])
    elif kind == "fitness-lengths":
        fit = (x[:50], y[:40])
    elif kind == "train-three-tensors":
        train = (x, y, y)
    elif kind == "train-not-tensors":
        train = (x.tolist(), y)
    elif kind == "metric-raises":
        metric = _bad_metric
    elif kind == "metric-of-fitness-overflows":
        metric_of_fitness = lambda value: 10.0 ** (1000 * value)  # noqa: E731 - OverflowError
    elif kind == "eval-batch-size":
        return Task(model=model, train=train, fitness=fit, loss=loss, eval_batch_size=0)
    elif kind != "none":
        raise AssertionError(kind)
    return Task(model=model, train=train, fitness=fit, loss=loss, metric=metric, metric_of_fitness=metric_of_fitness)


def needs_path(path: str) -> Task:
    """A task with a required argument."""
    return broken()


def _spec(tmp_path, kind: str) -> str:
    data = dict(tiny(task="test_task_errors:broken", generations=1), task_args={"kind": kind})
    return write_spec(tmp_path / "spec.yaml", data)


def _one_line_exit_2(result, store: str, *needles: str) -> str:
    code, out, err = result
    errors = [line for line in err.splitlines() if line.startswith("esgd: error: ")]
    assert code == 2 and len(errors) == 1 and err.strip().splitlines()[-1] == errors[0], err  # progress lines aside
    assert "Traceback" not in err and out == ""
    for needle in needles:
        assert needle in errors[0], errors[0]
    assert open_store(store).list("runs") == []  # nothing written
    return errors[0]


# Exceptions raised by the task function ----------------------------------------------------------------


def test_a_type_error_inside_the_task_is_not_called_refused_task_args(tmp_path, capsys):
    store = str(tmp_path / "store")
    line = _one_line_exit_2(
        run_cli(capsys, "run", _spec(tmp_path, "type-error-inside"), "--store", store),
        store,
        "task test_task_errors:broken: the task function raised TypeError: ",
    )
    assert "task_args" not in line


@pytest.mark.parametrize(
    "task_args, needle",
    [
        (
            {"kind": "none", "colour": "red"},
            "refused its task_args: broken() got an unexpected keyword argument 'colour'",
        ),
        ({"kind": "none", "examples": 10, "extra": 1}, "unexpected keyword argument 'extra'"),
    ],
)
def test_task_args_that_do_not_fit_the_signature_are_refused_as_such(tmp_path, capsys, task_args, needle):
    store = str(tmp_path / "store")
    spec = write_spec(tmp_path / "spec.yaml", dict(tiny(task="test_task_errors:broken"), task_args=task_args))
    _one_line_exit_2(run_cli(capsys, "run", spec, "--store", store), store, "task test_task_errors:broken", needle)


def test_a_missing_required_argument_is_refused_as_such(tmp_path, capsys):
    store = str(tmp_path / "store")
    spec = write_spec(tmp_path / "spec.yaml", dict(tiny(task="test_task_errors:needs_path"), task_args={}))
    _one_line_exit_2(
        run_cli(capsys, "run", spec, "--store", store), store, "refused its task_args: needs_path() missing", "'path'"
    )


@pytest.mark.parametrize(
    "kind, needle",
    [
        ("runtime-error", "the task function raised RuntimeError: CUDA driver too old"),
        ("exit", "the task function raised SystemExit: 3"),
        ("exit-none", "the task function raised SystemExit"),
        ("not-a-task", "returned dict, expected esgd.worker.task.Task"),
    ],
)
def test_an_exception_of_the_task_function_is_one_line_and_exit_2(tmp_path, capsys, kind, needle):
    store = str(tmp_path / "store")
    line = _one_line_exit_2(
        run_cli(capsys, "run", _spec(tmp_path, kind), "--store", store), store, "test_task_errors:broken", needle
    )
    assert "second line" not in line


def test_sys_exit_in_a_task_is_exit_2_with_one_line_in_a_real_process(tmp_path):
    """The console script, as a user runs it: no traceback, no silent exit 3."""
    spec = _spec(tmp_path, "exit")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "from esgd.cli.main import entry; entry()",
            "run",
            spec,
            "--store",
            str(tmp_path / "store"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert [line for line in done.stderr.splitlines() if line.startswith("esgd: error")] == [
        "esgd: error: task test_task_errors:broken: the task function raised SystemExit: 3"
    ]
    assert not (tmp_path / "store" / "runs").exists() or not any((tmp_path / "store" / "runs").iterdir())


def test_keyboard_interrupt_in_a_task_stays_an_interrupt():
    with pytest.raises(KeyboardInterrupt):
        load_task("test_task_errors:broken", {"kind": "interrupt"})


def test_transient_trouble_in_a_task_passes_through_unchanged(tmp_path, capsys):
    with pytest.raises(StoreUnavailable):
        load_task("test_task_errors:broken", {"kind": "store-outage"})
    code, out, err = run_cli(capsys, "run", _spec(tmp_path, "store-outage"), "--store", str(tmp_path / "store"))
    assert code == 75 and "cannot reach the S3 endpoint" in err and "(it may pass" in err


def test_a_module_that_fails_on_import_is_one_line(tmp_path, monkeypatch):
    (tmp_path / "explodes_on_import.py").write_text("raise RuntimeError('no GPU driver here')\n")
    (tmp_path / "exits_on_import.py").write_text("import sys\nsys.exit(5)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(TaskError, match=r"importing explodes_on_import raised RuntimeError: no GPU driver here"):
        load_task("explodes_on_import:task", {})
    with pytest.raises(TaskError, match=r"importing exits_on_import raised SystemExit: 5"):
        load_task("exits_on_import:task", {})
    with pytest.raises(TaskError, match="relative module name"):
        load_task(".tasks:task", {})


# The preflight mini-step: model, forward, loss, backward, fitness ----------------------------------------

MINI_STEP = {
    "model-raises": "model() raised ValueError: no such architecture: resnet7",
    "model-not-a-module": "model() returned Tensor, expected a torch.nn.Module",
    "no-parameters": "model() has no trainable parameters",
    "forward-raises-in-training": "on 4 training examples raised RuntimeError: this layer was never finished",
    "loss-wrong-arity": "the loss on 4 training examples raised TypeError",
    "loss-not-scalar": "the loss on training examples must be a scalar (a mean), got a tensor of shape [4]",
    "loss-no-grad": "the loss carries no gradient to the model's parameters",
    "loss-nan": "the loss on training examples is nan",
    "loss-float": "the loss must return a scalar tensor, got float",
    "loss-exits": "the loss on 4 training examples raised SystemExit: 4",
    "fitness-wrong-features": "forward pass on 4 fitness examples raised RuntimeError",
    "fitness-wrong-targets": "the loss on 4 fitness examples raised IndexError",
    "fitness-empty": "its fitness data has no examples",
    "fitness-lengths": "its fitness data has 50 inputs but 40 targets",
    "train-three-tensors": "its train data must be (inputs, targets), two tensors; got 3 items",
    "train-not-tensors": "its train data must be (inputs, targets), two tensors",
    "metric-raises": "the metric on 4 fitness examples raised KeyError: 'accuracy'",
    "metric-of-fitness-overflows": "metric_of_fitness raised OverflowError",
    "eval-batch-size": "eval_batch_size must be a whole number >= 1, got 0",
}


@pytest.mark.parametrize("kind", sorted(MINI_STEP))
def test_the_preflight_runs_the_tasks_code_before_anything_is_written(tmp_path, capsys, kind):
    store = str(tmp_path / "store")
    result = run_cli(capsys, "run", _spec(tmp_path, kind), "--store", store)
    _one_line_exit_2(result, store, "task test_task_errors:broken", MINI_STEP[kind])


# After the preflight: the task's code failing in a step -----------------------------------------------

LATER = {
    "loss-raises-later": (
        "its code (test_task_errors.py:{} in _loss_of_small_batches), during the train step of generation 0, "
        "raised ValueError: this loss was only written for batches of up to 8"
    ),
    "forward-raises-later": "in forward), during the init step, raised IndexError: this model was only tried",
}


@pytest.mark.parametrize("kind", sorted(LATER))
def test_the_tasks_code_failing_after_the_preflight_is_one_line_and_exit_2(tmp_path, capsys, kind):
    """The run exists by then (the preflight passed); the error is still one line naming the task's
    file, line and function, exit 2, not a traceback (it would fail the same way if retried)."""
    store = str(tmp_path / "store")
    code, out, err = run_cli(capsys, "run", _spec(tmp_path, kind), "--store", store)
    errors = [line for line in err.splitlines() if line.startswith("esgd: error: ")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in err, err
    line = _loss_of_small_batches.__code__.co_firstlineno + 2  # its raise
    assert errors[0].startswith("esgd: error: task test_task_errors:broken: its code (test_task_errors.py:"), errors[0]
    assert LATER[kind].format(line) in errors[0], errors[0]


def test_a_loss_that_fails_under_packed_training_is_one_line(tmp_path, capsys):
    """`.item()` in a loss works for one model (the preflight) and fails under vmap, which packed
    training uses: the step says so in one line, naming the loss."""
    store = str(tmp_path / "store")
    data = dict(tiny(task="test_task_errors:broken", generations=1), task_args={"kind": "loss-item"})
    data["pack"] = {"size": 4}
    data["sgd"] = {"epochs": 1, "batch_size": [64]}
    code, _, err = run_cli(capsys, "run", write_spec(tmp_path / "spec.yaml", data), "--store", store)
    errors = [line for line in err.splitlines() if line.startswith("esgd: error: ")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in err, err
    assert "in _loss_with_item), during the train step of generation 0, raised RuntimeError" in errors[0], errors[0]


def _raise(error: BaseException):
    raise error


@pytest.mark.parametrize("error", [torch.cuda.OutOfMemoryError("CUDA out of memory"), TaskError("one line")])
def test_out_of_memory_and_one_line_errors_pass_through_the_tasks_code(error):
    """Raised in the task's own code (this module), yet not the task's fault, or already one line."""
    task = broken()
    with pytest.raises(type(error)) as caught:
        with blamed_on("test_task_errors:broken", lambda: task, "a test"):
            _raise(error)
    assert caught.value is error


def test_a_failure_of_esgds_own_code_keeps_its_traceback():
    """Not raised in the task's code (a bundled task's, here): a bug to report, not bad input."""
    task = load_task("esgd.worker.tasks.digits:task", {"hidden": 8})
    with pytest.raises(ValueError) as caught:
        with blamed_on("esgd.worker.tasks.digits:task", lambda: task, "a test"):
            parse_range("not a range")  # esgd.core.plan raises it
    assert caught.type is ValueError and not isinstance(caught.value, TaskError)


def test_the_preflight_leaves_the_random_state_alone():
    spec = parse_spec(dict(tiny(task="test_task_errors:broken"), task_args={"kind": "none"}))
    task = load_task(spec.task, spec.task_args)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    preflight.check(spec, task)
    assert torch.equal(torch.get_rng_state(), before)


@pytest.mark.parametrize(
    "task, task_args",
    [
        ("esgd.worker.tasks.digits:task", {"hidden": 8}),
        ("esgd.worker.tasks.digits:task", {"hidden": 8, "batchnorm": True, "dtype": "float64"}),
        ("esgd.worker.tasks.toy:task", {"dataset": "iris"}),
        ("esgd.worker.tasks.toy:task", {"dataset": "breast_cancer"}),
        ("test_task_errors:broken", {}),
    ],
)
def test_working_tasks_pass_the_preflight(task, task_args):
    spec = parse_spec(dict(tiny(task=task, sgd={"batch_size": [16, 64]}), task_args=task_args))
    preflight.preflight(spec, "cpu")


# Batch sizes against the training set ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra, needle",
    [
        ({"sgd": {"batch_size": [64, 256]}}, "sgd.batch_size: batch size 256 is larger than the training set"),
        ({"mode": "single", "single": {"batch_size": 300}}, "single.batch_size: batch size 300 is larger"),
        ({"finetune": {"epochs": 1, "batch_size": 201}}, "finetune.batch_size: batch size 201 is larger"),
    ],
)
def test_a_batch_size_larger_than_the_training_set_names_both_numbers(tmp_path, capsys, extra, needle):
    store = str(tmp_path / "store")
    spec = write_spec(tmp_path / "spec.yaml", dict(tiny(task="test_task_errors:broken", **extra), task_args={}))
    _one_line_exit_2(
        run_cli(capsys, "run", spec, "--store", store), store, needle, "task test_task_errors:broken (200 examples)"
    )


def test_batch_sizes_the_mode_does_not_use_are_not_checked():
    """The single mode trains with single.batch_size only; fine-tuning's counts only when it runs."""
    spec = parse_spec(
        dict(
            tiny(
                task="test_task_errors:broken", mode="single", sgd={"batch_size": [1000]}, finetune={"batch_size": 999}
            ),
            task_args={"examples": 100},
        )
    )
    preflight.check(spec, load_task(spec.task, spec.task_args))
    assert preflight.batch_sizes(spec) == [("single.batch_size", 64)]


# esgd-worker: the run's first step checks the task where the data is ---------------------------------------


def _created_without_preflight(tmp_path, task_args: dict) -> str:
    """A run created the way the cluster controller creates it: the task not loaded."""
    store = open_store(str(tmp_path / "store"))
    spec = parse_spec(dict(tiny(task="test_task_errors:broken", generations=1), task_args=task_args))
    run, _ = create_or_resume(store, spec, "r")
    return run_uri(store, run.id)


@pytest.mark.parametrize(
    "task_args, needle",
    [
        ({"kind": "exit"}, "the task function raised SystemExit: 3"),
        ({"kind": "runtime-error"}, "the task function raised RuntimeError: CUDA driver too old"),
        ({"kind": "loss-no-grad"}, "the loss carries no gradient"),
        ({"kind": "fitness-wrong-features"}, "forward pass on 4 fitness examples raised RuntimeError"),
        ({"examples": 100}, "sgd.batch_size: batch size 128 is larger than the training set"),
        ({"kind": "none", "colour": "red"}, "refused its task_args: broken() got an unexpected keyword argument"),
    ],
)
def test_the_init_step_reports_the_task_error_in_one_line(tmp_path, capsys, task_args, needle):
    uri = _created_without_preflight(tmp_path, task_args)
    capsys.readouterr()
    assert worker(["init", "--run", uri, "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("esgd-worker: error:")]
    assert len(errors) == 1 and needle in errors[0] and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 2  # the start line, then the error


def test_transient_trouble_in_the_init_step_stays_transient(tmp_path, capsys):
    uri = _created_without_preflight(tmp_path, {"kind": "store-outage"})
    assert worker(["init", "--run", uri, "--device", "cpu"]) == 75
    assert "(transient)" in capsys.readouterr().err


# $ESGD_TASK_ALLOW: the modules tasks may come from ---------------------------------------------------------


def test_a_task_outside_the_allow_list_is_refused_before_its_module_is_imported(tmp_path, capsys, monkeypatch):
    (tmp_path / "never_imported_task.py").write_text("raise AssertionError('imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("ESGD_TASK_ALLOW", "esgd.worker.tasks, mylab.")
    store = str(tmp_path / "store")
    spec = write_spec(tmp_path / "spec.yaml", dict(tiny(task="never_imported_task:task"), task_args={}))
    _one_line_exit_2(
        run_cli(capsys, "run", spec, "--store", store),
        store,
        "task: module 'never_imported_task' is not allowed on this machine (ESGD_TASK_ALLOW=esgd.worker.tasks,mylab)",
    )
    assert "never_imported_task" not in sys.modules


@pytest.mark.parametrize(
    "allow, module, allowed",
    [
        ("esgd.worker.tasks", "esgd.worker.tasks.digits", True),
        ("esgd.worker.tasks", "esgd.worker.tasks", True),
        ("esgd.worker.tasks", "esgd.worker.tasksevil", False),
        ("mylab.", "mylab", True),
        ("mylab.", "mylab.vision.tasks", True),
        ("mylab", "mylab2.tasks", False),
        (" mylab , esgd.worker.tasks ", "esgd.worker.tasks.toy", True),
        (",", "esgd.worker.tasks.toy", False),  # set, but naming nothing: nothing allowed
        ("", "anything.at.all", True),  # empty: no restriction
    ],
)
def test_allow_list_entries_match_whole_module_names(monkeypatch, allow, module, allowed):
    from esgd.worker.task import check_allowed

    monkeypatch.setenv("ESGD_TASK_ALLOW", allow)
    if allowed:
        check_allowed(f"{module}:task")
    else:
        with pytest.raises(TaskError, match="is not allowed on this machine"):
            check_allowed(f"{module}:task")


def test_the_allow_list_lets_its_tasks_run(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ESGD_TASK_ALLOW", "esgd.worker.tasks")
    spec = write_spec(tmp_path / "spec.yaml", tiny(generations=1, population={"mu": 2, "offspring": 2, "elite": 1}))
    code, _, err = run_cli(capsys, "run", spec, "--store", str(tmp_path / "store"))
    assert code == 0, err


def test_the_worker_refuses_a_task_outside_the_allow_list(tmp_path, capsys, monkeypatch):
    uri = _created_without_preflight(tmp_path, {"kind": "none"})
    monkeypatch.setenv("ESGD_TASK_ALLOW", "esgd.worker.tasks")
    capsys.readouterr()
    assert worker(["init", "--run", uri, "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "esgd-worker: error: task: module 'test_task_errors' is not allowed on this machine" in err
    assert open_store(str(tmp_path / "store")).list("runs/r") == ["runs/r/spec.yaml"]


def test_the_allow_list_stops_a_stored_spec_from_running_commands(tmp_path, capsys, monkeypatch):
    """Write access to the store is code execution in the workers (docs/security.md): a frozen spec
    naming `os:system` runs a command in the first pod, unless the allow-list refuses it."""
    marker = tmp_path / "ran"
    store = open_store(str(tmp_path / "store"))
    spec = parse_spec(dict(tiny(), task="os:system", task_args={"command": f"touch {marker}"}))
    run, _ = create_or_resume(store, spec, "r")
    monkeypatch.setenv("ESGD_TASK_ALLOW", "esgd.worker.tasks")
    assert worker(["init", "--run", run_uri(store, run.id), "--device", "cpu"]) == 2
    assert "module 'os' is not allowed on this machine" in capsys.readouterr().err
    assert not marker.exists()


# The unpickling rule (docs/security.md) ------------------------------------------------------------------

PACKAGE = ("core", "store", "worker", "controller", "workflows", "analysis", "cli")


def test_nothing_reading_stored_data_unpickles():
    """The only unpickling in the package is the CIFAR-10 import of a file the user names
    (worker/data/imports.py, with an unpickler refusing every global but numpy's); checkpoints are
    Arrow IPC, records JSON, tables Parquet, specs YAML read with the safe loader."""
    import importlib
    import re

    import yaml

    root = TESTS.parent
    unsafe = re.compile(
        r"torch\.load\(|\bmarshal\b|\bdill\b|\bjoblib\b|\bshelve\b|\bcloudpickle\b|yaml\.(unsafe_load|full_load)\(|"
        r"yaml\.C?(Unsafe|Full)?Loader\b|allow_pickle\s*=\s*True|weights_only\s*=\s*False"
    )
    pickles, found = [], []
    for folder in PACKAGE:
        for path in sorted((root / folder).rglob("*.py")):
            text = path.read_text()
            name = str(path.relative_to(root))
            if re.search(r"^\s*(import pickle|from pickle import)", text, re.M):
                pickles.append(name)
            found += [f"{name}: {m.group(0)}" for m in unsafe.finditer(text)]
            for call in re.finditer(r"np\.load\(([^)]*)\)", text):
                if "allow_pickle=False" not in call.group(1):
                    found.append(f"{name}: {call.group(0)}")
            for call in re.finditer(r"yaml\.load\(([^)]*)\)", text):  # only with a loader that is a SafeLoader
                loader = re.search(r"Loader=(\w+)", call.group(1))
                module = importlib.import_module("esgd." + ".".join(path.relative_to(root).with_suffix("").parts))
                if not (loader and issubclass(getattr(module, loader.group(1), type), yaml.SafeLoader)):
                    found.append(f"{name}: {call.group(0)}")
    assert pickles == ["worker/data/imports.py"] and found == [], (pickles, found)
    imports = (root / "worker" / "data" / "imports.py").read_text()
    assert "class BatchUnpickler(pickle.Unpickler)" in imports and "def find_class" in imports
