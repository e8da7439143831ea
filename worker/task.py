"""The task interface: what a user plugs in by import path (`task: package.module:function`).

The function receives the spec's `task_args` as keyword arguments and returns a Task. See
docs/tasks.md. Which modules may be imported as tasks on this machine: $ESGD_TASK_ALLOW
(docs/security.md).
"""

import importlib
import inspect
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache, partial

import torch
import torch.nn.functional as F

from esgd.core.errors import InputError, TransientError
from esgd.store.base import StoreError

ALLOW = "ESGD_TASK_ALLOW"
"""Environment variable: comma-separated module prefixes tasks may come from (unset or empty: any)."""


class TaskError(InputError):
    """A task that cannot be loaded or run: bad import path, bad arguments, missing data, or an
    exception inside the task's own code (its function, model, loss or data)."""


@dataclass
class Task:
    model: Callable[[], torch.nn.Module]
    """Builds a fresh model (random init); called under a seeded RNG."""
    train: tuple[torch.Tensor, ...]
    """Training data as tensors with the examples along dim 0: (inputs, targets)."""
    fitness: tuple[torch.Tensor, ...]
    """Fitness data, same layout; fitness = mean loss on it, in eval mode, no grad."""
    test: tuple[torch.Tensor, ...] | None = None
    """Optional test data, same layout, never trained or selected on: the winner's loss and metric
    on it are scored once, when the run finishes (final/summary.json: test_fitness, test_metric)."""
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy
    """loss(model(inputs), targets) -> mean loss (a scalar tensor)."""
    metric: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    """Optional error metric on the fitness set, e.g. error rate (reported, never optimised)."""
    metric_of_fitness: Callable[[float], float] | None = None
    """Optional metric computed from the fitness value instead, e.g. perplexity = math.exp."""
    metric_name: str = "error"
    """Name of the metric in reports."""
    eval_batch_size: int = 1024
    """Batch size for fitness evaluation."""


def failure(path: str, where: str, error: BaseException) -> str:
    """One line for an exception raised inside a task's own code: the task, the place, the
    exception's type and the first line of its message."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    message = lines[0] if lines else ""
    if len(message) > 300:
        message = message[:297] + "..."
    return f"task {path}: {where} raised {type(error).__name__}{': ' + message if message else ''}"


def allowed_modules() -> tuple[str, ...] | None:
    """The module prefixes of $ESGD_TASK_ALLOW, or None when it is unset or empty (any module)."""
    raw = os.environ.get(ALLOW, "")
    if not raw.strip():
        return None
    return tuple(p for p in (part.strip().rstrip(".") for part in raw.split(",")) if p)


def check_allowed(path: str) -> None:
    """Refuse a task whose module is outside $ESGD_TASK_ALLOW, before importing anything of it. An
    entry allows a module and the modules under it: `mylab` (or `mylab.`) allows `mylab` and
    `mylab.tasks`, not `mylab2`."""
    allowed = allowed_modules()
    module = path.partition(":")[0]
    if allowed is not None and not any(module == prefix or module.startswith(prefix + ".") for prefix in allowed):
        raise TaskError(
            f"task: module {module!r} is not allowed on this machine ({ALLOW}={','.join(allowed) or '(nothing)'})"
        )


def _import(path: str) -> Callable:
    module_name, _, attr = path.partition(":")
    if module_name.startswith("."):
        raise TaskError(f"task: {module_name!r} is a relative module name; write it in full (package.module:function)")
    try:
        module = importlib.import_module(module_name)
    except (TransientError, InputError, StoreError):
        raise
    except ImportError as error:
        raise TaskError(f"task: cannot import {module_name!r} ({error})") from None
    except (Exception, SystemExit) as error:  # noqa: BLE001 - the module's own code failed: one line, exit 2
        raise TaskError(failure(path, f"importing {module_name}", error)) from None
    function = getattr(module, attr, None)
    if not callable(function):
        raise TaskError(f"task: {module_name!r} has no function {attr!r}")
    return function


def _refused_arguments(function: Callable, args: dict) -> str | None:
    """Why the call function(**args) cannot bind (unknown or missing arguments), or None when it
    binds or the function has no signature to check: a TypeError the call itself would raise,
    told apart from one raised inside the function."""
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return None
    try:
        signature.bind(**args)
    except TypeError as error:
        return f"{getattr(function, '__name__', 'the function')}() {error}"
    return None


@lru_cache(maxsize=4)
def _load(path: str, args_json: str) -> Task:
    function = _import(path)
    args = json.loads(args_json)
    refused = _refused_arguments(function, args)
    if refused:
        raise TaskError(f"task {path} refused its task_args: {refused}")
    try:
        task = function(**args)
    except (TransientError, InputError, StoreError):
        raise  # already one line (a store that cannot be reached now stays transient: exit 75)
    except FileNotFoundError as error:
        raise TaskError(f"task {path}: data file not found: {error.filename or error}") from None
    except (Exception, SystemExit) as error:  # noqa: BLE001 - the task's own code failed: one line, exit 2
        raise TaskError(failure(path, "the task function", error)) from None
    if not isinstance(task, Task):
        raise TaskError(f"task: {path} returned {type(task).__name__}, expected esgd.worker.task.Task")
    return task


def load_task(path: str, args: dict) -> Task:
    """Import and call the task function (cached per process). Raises TaskError, one line naming
    the task, for a module outside $ESGD_TASK_ALLOW, an import path or arguments that do not fit,
    and any exception (SystemExit included) raised by the task's code."""
    check_allowed(path)
    try:
        key = json.dumps(args, sort_keys=True)
    except TypeError as error:
        raise TaskError(f"task_args must be plain YAML values (numbers, strings, lists, mappings): {error}") from None
    return _load(path, key)


LIBRARIES = ("torch", "numpy", "builtins", "functools", "operator", "math", "esgd")
"""Modules that are never a task's own code, though a task may name their functions (F.cross_entropy
as its loss); `esgd.worker.tasks` (the bundled tasks) is the exception."""


def _own(module: str | None) -> str | None:
    """The module prefix whose code counts as a task's own, for a module the task names."""
    if not module or module == "__main__":
        return module or None
    if module.startswith("esgd.worker.tasks"):
        return "esgd.worker.tasks"
    root = module.partition(".")[0]
    return None if root in LIBRARIES else root


def own_modules(path: str, task: Task) -> frozenset[str]:
    """The module prefixes of a task's own code: the package of its task function, and those of
    the model factory, loss and metrics it returns (a partial's function; library functions aside)."""
    names = {path.partition(":")[0]}
    for function in (task.model, task.loss, task.metric, task.metric_of_fitness):
        while isinstance(function, partial):
            function = function.func
        names.add(getattr(function, "__module__", None))
    return frozenset(prefix for prefix in map(_own, names) if prefix)


def _frame_in(error: BaseException, modules: frozenset[str]):
    """The innermost traceback frame of `error` that runs code of these modules, or None."""
    found, tb = None, error.__traceback__
    while tb is not None:
        name = tb.tb_frame.f_globals.get("__name__", "")
        if any(name == m or name.startswith(m + ".") for m in modules):
            found = tb
        tb = tb.tb_next
    return found


NOT_THE_TASKS = (InputError, TransientError, StoreError, MemoryError, torch.cuda.OutOfMemoryError)
"""Raised through a task's code, yet not its fault: already one line, transient, or out of memory
(the step adapts or the pod is given more)."""


@contextmanager
def blamed_on(path: str, task: Callable[[], Task], where: str) -> Iterator[None]:
    """Run a block that calls the task's code (its model, loss, metrics) at run time, after the
    preflight: an exception raised inside that code (SystemExit included) becomes a TaskError, one
    line naming the task, the file and line of its code and the exception (exit code 2, never
    retried: the same code fails the same way). Exceptions raised elsewhere are ours and pass
    through unchanged, with their traceback. `task()` gives the loaded task (asked only then)."""
    try:
        yield
    except NOT_THE_TASKS:
        raise
    except (Exception, SystemExit) as error:  # noqa: BLE001 - sorted by where it was raised
        frame = _frame_in(error, own_modules(path, task()))
        if frame is None:
            raise
        code = frame.tb_frame.f_code
        place = f"{os.path.basename(code.co_filename)}:{frame.tb_lineno} in {code.co_name}"
        raise TaskError(failure(path, f"its code ({place}), during {where},", error)) from None
