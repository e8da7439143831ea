"""Checkpoint write/read throughput through S3Store vs raw boto3 transfers of the same bytes.

    .venv/bin/python bench/s3_throughput.py                 # starts a SeaweedFS on loopback
    .venv/bin/python bench/s3_throughput.py --mb 256 --repeat 5
    .venv/bin/python bench/s3_throughput.py --bucket B      # an existing server: AWS_* from the environment

One checkpoint (Arrow IPC, float32) of about --mb MB is written and read back --repeat times each way
(after an untimed warm-up write), alternating S3Store and boto3's own managed transfers (upload_fileobj
/ download_fileobj with boto3's default TransferConfig) in alternating order, in the same process
against the same server. Prints the median MB/s of each and the ratio S3Store / boto3 (goal: >= 0.8).
"""

import argparse
import io
import statistics
import sys
import time

import numpy as np
from s3_server import bench_bucket


def checkpoint_bytes(mb: int) -> bytes:
    from esgd.store import checkpoint
    from esgd.store.checkpoint import Entry, Layout

    values = mb * (1 << 20) // 4
    layout = Layout([Entry("w", [values], "float32", "param", 0)])
    return checkpoint.encode(layout, np.random.default_rng(0).standard_normal(values, dtype=np.float32))


def timed(fn) -> float:
    began = time.perf_counter()
    fn()
    return time.perf_counter() - began


def bench(bucket: str, mb: int, repeat: int) -> dict:
    from boto3.s3.transfer import TransferConfig

    from esgd.store.s3 import S3Store

    data = checkpoint_bytes(mb)
    size = len(data) / 1e6
    store = S3Store(bucket, "bench")
    raw = store.client  # same endpoint, credentials and botocore config
    config = TransferConfig()  # boto3's defaults: 8 MB parts, 10 threads
    key = "bench/raw.arrow"
    times: dict[str, list[float]] = {
        "store write": [],
        "boto3 write": [],
        "store read": [],
        "boto3 read": [],
        "store streamed write": [],
    }
    pieces = [data[i : i + (4 << 20)] for i in range(0, len(data), 4 << 20)]  # as the evolve step hands them over
    store.put("warm-up.arrow", data)  # untimed: the bucket's first write allocates its volumes
    raw.upload_fileobj(io.BytesIO(data), bucket, "bench/warm-up-raw.arrow", Config=config)
    writes = {
        "store write": lambda: store.put("store.arrow", data),
        "boto3 write": lambda: raw.upload_fileobj(io.BytesIO(data), bucket, key, Config=config),
        "store streamed write": lambda: store.write_stream("streamed.arrow", iter(pieces)),
    }
    got = {}

    def boto3_read():
        sink = io.BytesIO()
        raw.download_fileobj(bucket, key, sink, Config=config)
        got["raw"] = sink.getvalue()

    reads = {"store read": lambda: got.update(store=store.get("store.arrow")), "boto3 read": boto3_read}
    for round_ in range(repeat):
        for name in sorted(writes, reverse=bool(round_ % 2)):  # alternate the order
            times[name].append(timed(writes[name]))
        for name in sorted(reads, reverse=bool(round_ % 2)):
            times[name].append(timed(reads[name]))
        assert got["store"] == data and got["raw"] == data
        got.clear()
    rates = {name: size / statistics.median(t) for name, t in times.items()}
    return {"mb": size, "settings": store.settings, "rates": rates}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mb", type=int, default=128, help="checkpoint size in MB (default 128)")
    p.add_argument("--repeat", type=int, default=5, help="transfers of each kind (median reported)")
    p.add_argument("--bucket", help="use this bucket of the server the AWS_* environment points at")
    args = p.parse_args()
    with bench_bucket(args.bucket) as bucket:
        result = bench(bucket, args.mb, args.repeat)
    r = result["rates"]
    print(f"checkpoint {result['mb']:.0f} MB, {args.repeat} transfers each, median; S3Store {result['settings']}")
    for name, rate in r.items():
        print(f"  {name:22s} {rate:8.0f} MB/s")
    print(
        f"  write ratio S3Store/boto3 {r['store write'] / r['boto3 write']:.2f}  "
        f"(streamed {r['store streamed write'] / r['boto3 write']:.2f})"
    )
    print(f"  read  ratio S3Store/boto3 {r['store read'] / r['boto3 read']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
