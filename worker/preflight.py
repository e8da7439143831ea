"""The checks a run's spec gets before the run is created (controller.runs.create_or_resume
calls them): they load the task, so they run where torch and the data are."""

import torch

from esgd.core.spec import RunSpec, SpecError
from esgd.store import checkpoint
from esgd.store.base import StoreError
from esgd.store.uri import read_uri
from esgd.worker.run import resolve_device
from esgd.worker.task import TaskError, load_task
from esgd.worker.weights import load_into


def preflight(spec: RunSpec, device: str | None = None) -> None:
    """Check what can be checked before anything is written: the device exists, the task loads
    (import path, arguments, data files), its model runs on two training examples, and the
    checkpoints the spec names are checkpoints of that model. Raises InputError."""
    resolve_device(device or spec.device)
    task = load_task(spec.task, spec.task_args)
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
            except (OSError, StoreError) as error:
                raise SpecError(f"{field}: cannot read {path}: {getattr(error, 'strerror', None) or error}") from None
            try:
                load_into(task.model(), *checkpoint.decode(data))
            except Exception as error:  # noqa: BLE001 - not an ESGD checkpoint, or another architecture
                raise SpecError(
                    f"{field}: {path} is not a checkpoint of this task's model ({type(error).__name__}: "
                    f"{str(error).splitlines()[0][:200]})"
                ) from None
