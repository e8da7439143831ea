"""The command lines: `esgd` (main, cluster, experiments) and `esgd-worker` (worker), with the options they share (options)."""
