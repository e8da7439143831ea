"""Local generations on S3 with 1, 4 and 8 objects at once (ESGD_S3_OBJECTS).

    .venv/bin/python bench/s3_objects.py                 # starts a SeaweedFS on loopback
    .venv/bin/python bench/s3_objects.py --bucket B      # an existing server: AWS_* from the environment

Runs the bundled task (µ = 16, λ = 16, 1 epoch) for --generations generations once per setting, in
the order 1, 4, 8, 1, 4 (so drift in the machine's load shows), each in a fresh run under its own
prefix, and prints seconds per generation (the first generation not counted). A step reads and
writes one checkpoint and one record per individual; the setting is how many it moves at once.
"""

import argparse
import os
import sys
import time

from s3_server import bench_bucket


def seconds_per_generation(bucket: str, objects: int, generations: int) -> float:
    from esgd.controller.local import execute
    from esgd.controller.runs import create_or_resume
    from esgd.core.spec import parse_spec
    from esgd.store.s3 import S3Store

    os.environ["ESGD_S3_OBJECTS"] = str(objects)
    store = S3Store(bucket, f"objects-{objects}-{time.time_ns()}")
    spec = parse_spec(
        {
            "generations": generations + 1,
            "population": {"mu": 16, "offspring": 16},
            "task_args": {"hidden": 32},
            "sgd": {"batch_size": [64], "epochs": 1},
            "device": "cpu",
        }
    )
    run, _ = create_or_resume(store, spec, "bench")
    marks = []
    execute(run, "cpu", progress=lambda line: line.startswith("gen ") and marks.append(time.perf_counter()))
    return (marks[-1] - marks[0]) / (len(marks) - 1)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--generations", type=int, default=3, help="generations timed per setting")
    p.add_argument("--bucket", help="use this bucket of the server the AWS_* environment points at")
    args = p.parse_args()
    with bench_bucket(args.bucket) as bucket:
        for objects in (1, 4, 8, 1, 4):
            seconds = seconds_per_generation(bucket, objects, args.generations)
            print(f"ESGD_S3_OBJECTS={objects}: {seconds:.3f} s per generation", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
