from esgd.worker.cli import entry

entry()
