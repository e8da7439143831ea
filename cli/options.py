"""What the command lines share: the options several commands take (declared once, as argparse
parent parsers), and how a command's errors become one line and an exit code."""

import argparse
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from esgd.core.errors import TRANSIENT_EXIT, InputError, RunStopped, TransientError
from esgd.store.base import StoreError


def _parent(*args, **kwargs) -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(*args, **kwargs)
    return parent


STORE = _parent(
    "--store", help="store URI: a local directory (default ./esgd-runs or $ESGD_STORE) or s3://bucket/prefix"
)
CLUSTER_STORE = _parent("--store", help="store URI every pod reaches, e.g. s3://bucket/prefix (default $ESGD_STORE)")
RUN_ID = _parent("--run-id", help="run id; an existing id resumes (default: the spec's name plus a hash of the spec)")
SET = _parent(
    "--set",
    action="append",
    metavar="KEY=VALUE",
    help="override a spec field, e.g. --set population.mu=16 (repeatable)",
)
DEVICE = _parent("--device", help="torch device: auto (a GPU if any), cpu, cuda or cuda:N (default: the spec's device)")


def positive(text: str) -> int:  # argparse's own error (usage and one line, exit 2), as for a bad choice
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return int(text)


THREADS = _parent(
    "--threads",
    type=positive,
    metavar="N",
    help="torch intra-op threads (default: $ESGD_THREADS, else $OMP_NUM_THREADS, else the CPUs of this process's "
    "quota: cgroup limit and affinity)",
)
SETTINGS = _parent(
    "--settings", help="cluster settings (YAML, docs/kubernetes.md; in the chart: the <release>-settings ConfigMap)"
)


BROKEN_PIPE_EXIT = 141
"""128 + SIGPIPE: the status a shell shows for a filter whose reader went away (`yes | head`)."""


def _quiet() -> None:
    """Point the stream whose reader went away at /dev/null, so that what is still buffered does not
    fail again at exit (Python's documented recipe for SIGPIPE); a stream that still works is kept."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BrokenPipeError:
            try:
                os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())
            except (OSError, ValueError):  # not a real file (a test's capture): it is not flushed at exit
                pass
        except (OSError, ValueError):
            pass


def run_main(prog: str, handler: Callable[[], int]) -> int:
    """handler()'s exit code. Transient trouble (a store or API that cannot be reached now) is one
    line and exit code 75; bad input, an unusable store and a run that cannot go on, one line and
    exit code 2. A reader that goes away (`esgd report --json | head`) ends the command quietly
    with exit code 141, as a Unix filter killed by SIGPIPE ends (under `set -o pipefail` a script
    sees the same status as for `cat` or `grep`); a run in progress stops as after an interrupt and
    resumes with the same command."""
    try:
        code = handler()
        sys.stdout.flush()  # a reader that went away shows up here rather than at exit
        return code
    except BrokenPipeError:
        _quiet()
        return BROKEN_PIPE_EXIT
    except TransientError as error:
        print(f"{prog}: error: {error} (it may pass: run the same command again)", file=sys.stderr)
        return TRANSIENT_EXIT
    except (InputError, StoreError) as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    except RunStopped as error:
        print(f"{prog}: run stopped: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # an output path that cannot be written (--out, -o, --dot, ...)
        print(f"{prog}: error: {error.filename or ''}: {error.strerror or error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


def exit_after(main_function: Callable[[], int]) -> None:
    """Run a CLI's main(), then exit without interpreter teardown. Everything is flushed and
    committed by then; skipping teardown avoids a native library's thread pool aborting at exit
    ("terminate called without an active exception", seen about once in a hundred worker runs),
    which would turn a finished step into a failed one."""
    code = main_function()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def log(line: str) -> None:
    """A progress line on stderr (stdout carries only a command's result, e.g. a run URI)."""
    print(line, file=sys.stderr, flush=True)


@contextmanager
def status(line: str) -> Iterator[None]:
    """`line` on stderr while the block runs, on a terminal only, erased when it ends: life within a
    second of starting (loading torch and the task takes seconds) that leaves bad input its one
    error line. Elsewhere (logs, pipes, tests) nothing: the next progress line follows soon."""
    shown = bool(line) and sys.stderr.isatty()
    if shown:
        sys.stderr.write(line)
        sys.stderr.flush()
    try:
        yield
    finally:
        if shown:
            sys.stderr.write("\r\x1b[K")  # back to the line's start, erased
            sys.stderr.flush()
