"""What fsync costs a local store (ESGD_FSYNC, docs/storage.md): commits alone, and a whole run;
and what the tables' checksums cost a large history.

1. Commits: N times a checkpoint (`--checkpoint-kb`, put as a step writes one) and the record that
   names it (put_if_absent), into a fresh local store with fsync on and off; seconds per commit.
2. A run: `esgd run SPEC` in a fresh store with ESGD_FSYNC=1 and ESGD_FSYNC=0 (a fresh process
   each, variants alternating, `--runs` times): wall seconds (the least and the median), and the
   fsync calls and the seconds spent in them, timed inside the run's process (so a loaded machine
   does not blur what fsync itself costs). Default spec: the demo's (examples/digits.yaml).
3. Checksums: a synthetic history of `--parts` parts of 1 000 rows merged (what every select does:
   the merged file read and checked, one part added, the checksum of the whole computed) and read
   back checked; the seconds of it spent computing checksums.

  python bench/fsync.py                          # both, about 5 minutes on 2 CPU cores
  python bench/fsync.py --runs 0                 # commits only, seconds
  python bench/fsync.py --dir /mnt/disk          # where the stores go (default: a temporary folder)

The numbers depend on the disk and file system (and on what else writes to them): measure where
the runs will live.
"""

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def commits(folder: Path, fsync: bool, count: int, checkpoint_kb: int) -> float:
    """Seconds per commit (a checkpoint, then its record) into a fresh store."""
    from esgd.core.records import FitnessRecord, encode
    from esgd.store.local import LocalStore

    store = LocalStore(folder / f"commits-{int(fsync)}", fsync=fsync)
    payload = os.urandom(checkpoint_kb << 10)
    record = encode(FitnessRecord("init-000", 1.0))
    began = time.perf_counter()
    for i in range(count):
        store.put(f"runs/r/gen-{i // 16:04d}/train/m{i:03d}.a.arrow", payload)
        store.put_if_absent(f"runs/r/gen-{i // 16:04d}/train/m{i:03d}.json", record)
    return (time.perf_counter() - began) / count


RUN = """
import json, os, sys, time
calls = [0, 0.0]
real = os.fsync
def timed(fd):
    began = time.perf_counter()
    real(fd)
    calls[0] += 1
    calls[1] += time.perf_counter() - began
os.fsync = timed
from esgd.cli.main import main
began = time.perf_counter()
code = main(sys.argv[1:])
print(json.dumps({"code": code, "wall": time.perf_counter() - began, "fsyncs": calls[0], "in_fsync": calls[1]}))
sys.stdout.flush()
os._exit(0)  # as the esgd script does (esgd.cli.options.exit_after): no interpreter teardown
"""


def run(folder: Path, fsync: bool, spec: str) -> dict:
    """`esgd run SPEC` in a fresh store, in a fresh process: wall seconds, fsync calls and the
    seconds spent in them (timed inside the process: what fsync costs, whatever else loads the CPUs)."""
    store = folder / f"run-{int(fsync)}-{time.monotonic_ns()}"
    env = {**os.environ, "ESGD_FSYNC": "1" if fsync else "0"}
    argv = [sys.executable, "-c", RUN, "run", spec, "--store", str(store), "--run-id", "bench"]
    done = subprocess.run(argv, check=True, env=env, capture_output=True, text=True)
    shutil.rmtree(store)
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["code"] == 0, done.stderr
    return out


def checksums(parts: int) -> dict:
    """Seconds to extend a merged history of parts-1 parts (1 000 rows each) by one, to read the
    result back (both checked), and to compute the checksum of the whole once."""
    from esgd.core import tables
    from esgd.core.hparams import HParams
    from esgd.core.records import HistoryRow

    hp = HParams("adam", 1e-3, 0.0, 0.0, 0.9, 0.999, 32)

    def part(g: int) -> bytes:
        rows = [
            HistoryRow(g, -1, f"m{i}", "parent", 0.1 * i, 0.2, True, True, hp, ("a", "b"), None, 0, 1)
            for i in range(1000)
        ]
        return tables.to_parquet(rows, HistoryRow)

    stored = {f"history/gen-{g:04d}.parquet": part(g) for g in range(parts)}
    names = list(stored)
    merged = tables.merge_parts(None, names[:-1], stored.get, HistoryRow)
    began = time.perf_counter()
    merged = tables.merge_parts(merged, names, stored.get, HistoryRow)
    merge = time.perf_counter() - began
    began = time.perf_counter()
    table = tables.read_table(merged, HistoryRow)
    read = time.perf_counter() - began
    began = time.perf_counter()
    tables._checksum(table, table.schema.metadata)
    return {"merge": merge, "read": read, "checksum": time.perf_counter() - began, "rows": table.num_rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", help="folder for the stores (default: a temporary folder)")
    parser.add_argument("--commits", type=int, default=400, help="commits per variant (default 400)")
    parser.add_argument("--checkpoint-kb", type=int, default=64, help="checkpoint size in KiB (default 64)")
    parser.add_argument("--runs", type=int, default=3, help="runs per variant (default 3; 0: none)")
    parser.add_argument("--spec", default=str(ROOT / "examples" / "digits.yaml"), help="spec of the runs")
    parser.add_argument("--parts", type=int, default=100, help="history parts of 1 000 rows (default 100; 0: none)")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="esgd-fsync-", dir=args.dir))
    try:
        print(f"{platform.node()}: {platform.platform()}, {os.cpu_count()} CPUs; stores in {folder}")
        print(
            f"{'variant':<12} {'per commit (ms)':>16}   "
            f"({args.commits} commits of a {args.checkpoint_kb} KiB checkpoint + record)"
        )
        per = {}
        for fsync in (False, True, False, True):  # alternating: the second pair is reported
            per[fsync] = commits(folder / str(len(per)), fsync, args.commits, args.checkpoint_kb)
        for fsync in (False, True):
            print(f"{'fsync' if fsync else 'no fsync':<12} {1e3 * per[fsync]:>16.2f}")
        if args.runs:
            runs = {False: [], True: []}
            for _ in range(args.runs):
                for fsync in (False, True):
                    runs[fsync].append(run(folder, fsync, args.spec))
            print(f"esgd run {Path(args.spec).name}, {args.runs} times each, alternating:")
            print(f"{'variant':<12} {'wall min (s)':>13} {'median (s)':>11} {'fsync calls':>12} {'in fsync (s)':>13}")
            for fsync in (False, True):
                walls = [r["wall"] for r in runs[fsync]]
                calls = statistics.median(r["fsyncs"] for r in runs[fsync])
                spent = statistics.median(r["in_fsync"] for r in runs[fsync])
                name = "fsync" if fsync else "no fsync"
                print(f"{name:<12} {min(walls):>13.2f} {statistics.median(walls):>11.2f} {calls:>12.0f} {spent:>13.2f}")
        if args.parts:
            cost = checksums(args.parts)
            print(
                f"history of {cost['rows']} rows: extended by 1 000 in {cost['merge']:.2f} s, read back in "
                f"{cost['read']:.2f} s (both checked); one checksum of the whole: {cost['checksum']:.2f} s "
                "(a merge computes two, a read one)"
            )
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
