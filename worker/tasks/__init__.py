"""Built-in tasks. Each module has a `task(**args) -> Task` function."""
