"""The errors the command lines turn into a single line and exit code 2 (esgd.cli.options.run_main)."""


class InputError(ValueError):
    """Bad input from the user (a spec field, an import path, a data file, a member id): the CLI
    prints one line naming what is wrong and exits with code 2, with nothing written."""


class RunStopped(Exception):
    """A run that cannot go on (a phase failed every attempt, an engine that cannot be used): the
    CLI prints `run stopped:` and the reason, exit code 2; the same command resumes it later."""
