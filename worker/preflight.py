"""The checks of a run's spec that need its task: `esgd run` makes them before it creates the run
(controller.runs.create_or_resume), and the run's first step (init) makes them again where the
data is, which on a cluster is the first pod: the controller loads neither torch nor the data."""

import torch

from esgd.core.errors import TransientError
from esgd.core.spec import RunSpec, SpecError
from esgd.store import checkpoint
from esgd.store.base import StoreError
from esgd.store.uri import read_uri
from esgd.worker.run import resolve_device
from esgd.worker.task import Task, TaskError, load_task
from esgd.worker.weights import load_into


def preflight(spec: RunSpec, device: str | None = None) -> None:
    """Check what can be checked before anything is written: the device exists, the task loads
    (import path, arguments, data files), and check() holds. Raises InputError."""
    resolve_device(device or spec.device)
    check(spec, load_task(spec.task, spec.task_args))


def check(spec: RunSpec, task: Task) -> None:
    """The task's model runs on two training examples, and the checkpoints the spec names are
    checkpoints of that model. Raises InputError naming the task or the spec field."""
    try:
        with torch.no_grad():
            task.model().eval()(task.train[0][:2])
    except Exception as error:  # noqa: BLE001 - any failure here is the task's, reported as one line
        raise TaskError(
            f"task: the model of {spec.task} fails on two training examples: {type(error).__name__}: {error}"
        ) from None
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
