"""Driving runs: creating or resuming them, the engine-neutral driver, and the engines (local, Argo)."""
