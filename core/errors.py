"""The one error type the command line turns into a single line and exit code 2."""


class InputError(ValueError):
    """Bad input from the user (a spec field, an import path, a data file, a member id): the CLI
    prints one line naming what is wrong and exits with code 2, with nothing written."""
