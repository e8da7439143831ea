"""The checks of a run's spec that need its task: `esgd run` makes them before it creates the run
(controller.runs.create_or_resume), and the run's first step (init) makes them again where the
data is, which on a cluster is the first pod: the controller loads neither torch nor the data.

The task's code runs once here the way training and fitness run it, on a few examples: a model,
its forward pass, the loss and its gradient, then the loss and metric on the fitness set. Whatever
fails there is one line naming the task and the exception (TaskError, exit code 2), before
anything is written, instead of a traceback once the run exists."""

import math

import torch

from esgd.core.errors import TransientError
from esgd.core.spec import RunSpec, SpecError
from esgd.store import checkpoint
from esgd.store.base import StoreError
from esgd.store.uri import read_uri
from esgd.worker.optimizers import implementation
from esgd.worker.run import resolve_device
from esgd.worker.task import Task, TaskError, failure, load_task
from esgd.worker.weights import load_into

EXAMPLES = 4
"""Training and fitness examples of the mini-step: few (it runs before every `esgd run`), at
least 2 (a BatchNorm layer in training mode needs 2)."""


def preflight(spec: RunSpec, device: str | None = None) -> None:
    """Check what can be checked before anything is written: the device exists, the task loads
    (import path, arguments, data files), and check() holds. Raises InputError."""
    resolve_device(device or spec.device)
    check(spec, load_task(spec.task, spec.task_args))


def check(spec: RunSpec, task: Task) -> None:
    """The task's data has the layout training reads, the spec's batch sizes fit its training set,
    one mini-step of its code runs (mini_step), and the checkpoints the spec names are checkpoints
    of its model. Raises InputError naming the task or the spec field."""
    for name in ("train", "fitness", "test"):
        if name != "test" or task.test is not None:  # a test set is optional
            _check_data(spec.task, name, getattr(task, name))
    if not isinstance(task.eval_batch_size, int) or task.eval_batch_size < 1:
        raise TaskError(f"task {spec.task}: eval_batch_size must be a whole number >= 1, got {task.eval_batch_size!r}")
    check_batch_sizes(spec, len(task.train[0]))
    check_carried_state(spec)
    mini_step(spec.task, task)
    _check_checkpoints(spec, task)


def _check_data(path: str, name: str, data) -> None:
    """(inputs, targets): two tensors with as many examples each along dim 0, at least one."""
    if not isinstance(data, (tuple, list)) or len(data) != 2 or not all(isinstance(t, torch.Tensor) for t in data):
        got = f"{len(data)} items" if isinstance(data, (tuple, list)) else type(data).__name__
        raise TaskError(f"task {path}: its {name} data must be (inputs, targets), two tensors; got {got}")
    if any(t.dim() == 0 for t in data):
        raise TaskError(f"task {path}: its {name} data must hold the examples along dim 0; got a 0-d tensor")
    inputs, targets = data
    if len(inputs) != len(targets):
        raise TaskError(f"task {path}: its {name} data has {len(inputs)} inputs but {len(targets)} targets")
    if len(inputs) == 0:
        raise TaskError(f"task {path}: its {name} data has no examples")


def batch_sizes(spec: RunSpec) -> list[tuple[str, int]]:
    """(field, largest batch size) of every batch size field the run trains with."""
    used = [("single.batch_size", spec.single.batch_size)] if spec.mode == "single" else []
    if spec.mode != "single":
        used.append(("sgd.batch_size", max(spec.sgd.batch_size)))
    if spec.finetune.epochs > 0:
        used.append(("finetune.batch_size", spec.finetune.batch_size))
    return used


def check_carried_state(spec: RunSpec) -> None:
    """sgd.optimizer_state: carry needs every optimizer family of the run to say how its state
    enters and leaves torch.optim (Implementation.torch_state); a plug-in family may not."""
    if spec.sgd.optimizer_state != "carry":
        return
    used = [spec.single.optimizer] if spec.mode == "single" else sorted(spec.sgd.optimizers)
    for family in used:
        if not hasattr(implementation(family), "torch_state"):
            raise SpecError(
                f"sgd.optimizer_state: carry: optimizer family {family!r} does not say how its state is carried "
                "(its implementation has no torch_state; docs/architecture.md): use reset"
            )


def check_batch_sizes(spec: RunSpec, examples: int) -> None:
    """A batch size larger than the training set is a spec error naming both numbers."""
    for field, size in batch_sizes(spec):
        if size > examples:
            raise SpecError(
                f"{field}: batch size {size} is larger than the training set of task {spec.task} ({examples} examples)"
            )


def _call(path: str, where: str, function, *args):
    """function(*args); an exception of the task's code becomes one line naming the task."""
    try:
        return function(*args)
    except TransientError:
        raise
    except (Exception, SystemExit) as error:  # noqa: BLE001 - any failure here is the task's, reported as one line
        raise TaskError(failure(path, where, error)) from None


def _scalar(path: str, what: str, value, finite: bool = True) -> float:
    """A number (finite, unless told otherwise) from a one-element tensor or a number."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise TaskError(f"task {path}: {what} must be a scalar (a mean), got a tensor of shape {list(value.shape)}")
        number = float(value.detach().float())
    elif isinstance(value, (int, float)):
        number = float(value)
    else:
        raise TaskError(f"task {path}: {what} must be a scalar tensor, got {type(value).__name__}")
    if finite and not math.isfinite(number):
        raise TaskError(f"task {path}: {what} is {number} for a freshly initialised model")
    return number


def mini_step(path: str, task: Task) -> None:
    """One training step's worth of the task's code without an optimizer, on EXAMPLES training
    examples (model, forward in training mode, loss, backward: the loss is a finite scalar and
    finite gradients reach the parameters), then one fitness evaluation on EXAMPLES fitness
    examples (eval mode, no grad: the loss is a finite scalar; the metric, if any, a number).
    What this cannot see: a failure on other examples or at another batch size, and whether the
    loss can be vmapped for packed training (esgd.worker.run.Run.packable checks the forward pass).
    Under a forked, fixed RNG: the caller's random state is untouched."""
    x, y = (t[:EXAMPLES] for t in task.train)
    xf, yf = (t[:EXAMPLES].to(x.device) for t in task.fitness)
    cuda = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.default_generator.manual_seed(0)  # model() builds on the CPU; other devices' states stay as they were
        model = _call(path, "model()", task.model)
        if not isinstance(model, torch.nn.Module):
            raise TaskError(f"task {path}: model() returned {type(model).__name__}, expected a torch.nn.Module")
        model = model.to(x.device)
        trainable = [p for p in model.parameters() if p.requires_grad]
        if not trainable:
            raise TaskError(f"task {path}: model() has no trainable parameters")
        model.train()
        n = len(x)
        out = _call(path, f"the model's forward pass on {n} training examples", model, x)
        loss = _call(path, f"the loss on {n} training examples", task.loss, out, y)
        if not isinstance(loss, torch.Tensor):
            raise TaskError(f"task {path}: the loss must return a scalar tensor, got {type(loss).__name__}")
        _scalar(path, "the loss on training examples", loss)
        if not loss.requires_grad:
            raise TaskError(
                f"task {path}: the loss carries no gradient to the model's parameters (computed without "
                "autograd: .item(), .detach(), argmax, or under torch.no_grad)"
            )
        _call(path, "backward() of the loss", loss.backward)
        grads = [p.grad for p in trainable if p.grad is not None]
        if not grads:
            raise TaskError(f"task {path}: the loss does not depend on any of the model's parameters (no gradient)")
        if not all(bool(torch.isfinite(g).all()) for g in grads):
            raise TaskError(f"task {path}: the gradient of the loss is not finite for a freshly initialised model")
        model.eval()
        with torch.no_grad():
            n = len(xf)
            out = _call(path, f"the model's forward pass on {n} fitness examples", model, xf)
            loss = _call(path, f"the loss on {n} fitness examples", task.loss, out, yf)
            value = _scalar(path, "the loss on fitness examples", loss)
            if task.metric_of_fitness is not None:
                reported = _call(path, "metric_of_fitness", task.metric_of_fitness, value)
                _scalar(path, "metric_of_fitness", reported, finite=False)
            elif task.metric is not None:
                reported = _call(path, f"the metric on {n} fitness examples", task.metric, out, yf)
                _scalar(path, "the metric", reported, finite=False)


def _check_checkpoints(spec: RunSpec, task: Task) -> None:
    """The checkpoints the spec names can be read and are checkpoints of the task's model."""
    for field, path in (
        ("population.init.checkpoint", spec.population.init.checkpoint),
        ("reference.checkpoint", spec.reference.checkpoint),
    ):
        if path:
            try:
                data = read_uri(path)
            except TransientError:
                raise  # the store may come back: not bad input
            except (OSError, StoreError) as error:
                raise SpecError(f"{field}: cannot read {path}: {getattr(error, 'strerror', None) or error}") from None
            try:
                load_into(task.model(), *checkpoint.decode(data))
            except Exception as error:  # noqa: BLE001 - not an ESGD checkpoint, or another architecture
                raise SpecError(
                    f"{field}: {path} is not a checkpoint of this task's model ({type(error).__name__}: "
                    f"{str(error).splitlines()[0][:200]})"
                ) from None
