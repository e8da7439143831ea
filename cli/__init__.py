"""The command lines: `esgd` (modules main, cluster, experiments) and `esgd-worker` (worker), with
the options they share (options)."""
