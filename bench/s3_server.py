"""The S3 bucket a storage benchmark runs against: the --bucket of the server the AWS_* environment
points at, or else a bucket on a SeaweedFS started on loopback for the benchmark (the test suite's
server, tests/seaweed.py), removed afterwards."""

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def bench_bucket(bucket: str | None) -> Iterator[str]:
    if bucket is not None:
        yield bucket
        return
    sys.path.insert(0, str(ROOT / "tests"))
    from seaweed import Seaweed

    with tempfile.TemporaryDirectory(prefix="esgd-bench-") as scratch:
        server = Seaweed(Path(scratch)).start()
        try:
            os.environ.update(server.env)
            yield server.create_bucket("bench")
        finally:
            server.stop(kill=True)
