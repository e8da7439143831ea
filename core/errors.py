"""The two kinds of failure, and how the command lines end on them (esgd.cli.options): bad input is
one line and exit code 2, never retried; transient trouble is one line and exit code 75, retried
(with back-off by Argo, the driver, or whoever runs the command again)."""

TRANSIENT_EXIT = 75  # EX_TEMPFAIL: try again later


class InputError(ValueError):
    """Bad input from the user (a spec field, an import path, a data file, a member id): the CLI
    prints one line naming what is wrong and exits with code 2, with nothing written."""


class TransientError(Exception):
    """Trouble that may pass: a store or API that cannot be reached, throttles or times out, after
    the caller's own retries ran out. Exit code 75; the same command works once it has passed."""


class RunStopped(Exception):
    """A run that cannot go on (a phase failed every attempt, an engine that cannot be used): the
    CLI prints `run stopped:` and the reason, exit code 2; the same command resumes it later."""


class RunUnavailable(RunStopped, TransientError):
    """A run stopped by transient trouble (its last attempt's steps could not reach the store):
    exit code 75, as for any transient trouble."""
