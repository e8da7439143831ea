"""The generation loop: creating or resuming runs, the local executor, reports, the CLI."""
