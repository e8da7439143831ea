"""Where a run's state lives: the store interface, the local directory store and the checkpoint format."""
