"""Threads from the CPU quota (issue 12): the same CPU training with torch's default thread count and
with the count configure_threads() picks under a small CPU quota, on a machine loaded by busy loops.

In a pod whose CPU limit is smaller than its node, torch starts as many threads as the node has
cores; they outnumber the CPU time the pod gets and wait on each other. This bench makes the same
shortage on any machine: `--load` processes spin on the CPUs while the training runs, and the
"quota" variant reads a fake cgroup (`cpu.max` of `--quota` CPUs) through configure_threads(). Each
measurement is a fresh process (torch's pools are sized once per process), variants alternate.

  python bench/threads.py                     # 2 busy loops, quota 1, 5 repeats: about 2 minutes on 2 cores
  python bench/threads.py --load 0            # the same without load, for reference
"""

import argparse
import multiprocessing
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path


def busy() -> None:
    while True:
        pass


def train(steps: int) -> float:
    """Seconds for `steps` SGD steps of an MLP wide enough for torch to split its matrix products
    over threads (256 -> 1024 -> 1024 -> 10, batch 256), after a few untimed steps."""
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(256, 1024),
        torch.nn.ReLU(),
        torch.nn.Linear(1024, 1024),
        torch.nn.ReLU(),
        torch.nn.Linear(1024, 10),
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(256, 256), torch.randint(10, (256,))

    def step():
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    for _ in range(5):
        step()
    began = time.perf_counter()
    for _ in range(steps):
        step()
    return time.perf_counter() - began


def child(variant: str, quota: int, steps: int) -> None:
    """One measurement: prints the thread count and the seconds."""
    import torch

    from esgd.worker import threads

    if variant == "quota":
        root = Path(tempfile.mkdtemp())
        (root / "cpu.max").write_text(f"{quota * 100000} 100000\n")  # cgroup v2: `quota` CPUs
        threads.cpu_quota = partial(threads.cpu_quota, root)  # what configure_threads reads by default
        threads.configure_threads()
    print(torch.get_num_threads(), train(steps))


def measure(variant: str, args) -> tuple[int, float]:
    # No thread settings inherited: "default" is what torch picks by itself.
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "ESGD_THREADS")}
    argv = [sys.executable, __file__, "--child", variant, "--quota", str(args.quota), "--steps", str(args.steps)]
    out = subprocess.run(argv, env=env, capture_output=True, text=True, check=True).stdout.split()
    return int(out[0]), float(out[1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--load", type=int, default=2, help="busy-loop processes running meanwhile (default 2)")
    p.add_argument("--quota", type=int, default=1, help="CPUs of the simulated cgroup limit (default 1)")
    p.add_argument("--steps", type=int, default=50, help="timed training steps per measurement (default 50)")
    p.add_argument("--repeat", type=int, default=5, help="measurements per variant (default 5)")
    p.add_argument("--child", choices=["default", "quota"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args.child, args.quota, args.steps)

    load = [multiprocessing.Process(target=busy, daemon=True) for _ in range(args.load)]
    for process in load:
        process.start()
    results: dict[str, list[float]] = {"default": [], "quota": []}
    counts = {}
    try:
        for _ in range(args.repeat):
            for variant in results:  # alternating, so that a change in the machine's load hits both
                counts[variant], seconds = measure(variant, args)
                results[variant].append(seconds)
    finally:
        for process in load:
            process.terminate()
            process.join()

    import torch

    print(
        f"{platform.machine()}, {len(os.sched_getaffinity(0))} CPUs, torch {torch.__version__}; "
        f"{args.load} busy loops, {args.steps} steps of a 256-1024-1024-10 MLP (batch 256), {args.repeat} repeats\n"
    )
    print("| threads | torch threads | median s | min s | max s |")
    print("|---|---|---|---|---|")
    names = {"default": "torch's default", "quota": f"configure_threads(), quota {args.quota} CPU"}
    for variant, times in results.items():
        row = (statistics.median(times), min(times), max(times))
        print(f"| {names[variant]} | {counts[variant]} | " + " | ".join(f"{t:.2f}" for t in row) + " |")


if __name__ == "__main__":
    main()
