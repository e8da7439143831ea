"""Packed training vs the sequential plain-PyTorch loop, in one run (issue: fast populations).

For each device (cpu, and cuda when present) and model (an MLP, ResNet-20 on CIFAR-10 shapes) it
times, with the same model, data (already on the device) and batch size:
  - sequential: a plain PyTorch loop, one model at a time, torch.optim SGD with Nesterov, fp32;
  - packed k:   esgd.worker.packed.train_pack with k individuals (k in --ks), one epoch each,
                including its per-epoch fitness evaluation and back-off bookkeeping; with
                --compile also through torch.compile, and with --mixed-k a pack of five
                optimizer families;
and prints seconds per individual-epoch and the speed-up over the sequential loop. An epoch is
50,000 examples for ResNet-20 (CIFAR-10) and 1,257 for the MLPs (the bundled digits task); each
measurement times a few steps and scales them to the epoch (a packed epoch's fixed work, timed
apart from its steps, counted once).
Then it runs whole local generations of the bundled task and prints the share of time spent
outside training and fitness evaluation, and that time per individual.

  python bench/packing.py                   # everything available (slow on a CPU: use --quick)
  python bench/packing.py --quick           # a few minutes on one GPU or on 2 CPU cores
"""

import argparse
import math
import tempfile
import time

import torch
import torch.nn.functional as F

from esgd.core.hparams import HParams
from esgd.worker.packed import Pack, train_pack
from esgd.worker.task import Task
from esgd.worker.tasks.mlp import mlp
from esgd.worker.tasks.resnet import resnet

MODELS = {
    # name: (factory, input shape, classes, batch size, examples per epoch)
    "mlp": (lambda: mlp(64, 32, 2, 10), (64,), 10, 64, 1257),  # the bundled digits task's MLP
    "mlp-wide": (lambda: mlp(64, 128, 2, 10), (64,), 10, 64, 1257),  # 4x wider: compute starts to dominate
    "resnet20": (lambda: resnet(20), (3, 32, 32), 10, 128, 50000),
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def warm_up(device: torch.device, seconds: float = 2.0) -> None:
    """Matrix products until the GPU has left its idle clocks, so the first row is not measured slow."""
    a = torch.randn(4096, 4096, device=device)
    began = time.perf_counter()
    while time.perf_counter() - began < seconds:
        a @ a
        sync(device)


def data(shape, classes, n, device):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, *shape, generator=g).to(device), torch.randint(classes, (n,), generator=g).to(device)


FAMILIES = ("sgd", "nesterov", "adam", "adamw", "rmsprop")


def hp(batch, family="nesterov") -> HParams:
    return HParams(family, lr=0.05, momentum=0.9, weight_decay=5e-4, beta1=0.9, beta2=0.999, batch_size=batch)


def sequential(factory, x, y, batch, steps, models, device) -> float:
    """Seconds per individual-step of the plain loop (after one warm-up step per model)."""
    nets = [factory().to(device) for _ in range(models)]
    opts = [torch.optim.SGD(n.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4) for n in nets]
    total = 0.0
    for net, opt in zip(nets, opts):
        net.train()
        for step in range(steps + 1):
            if step == 1:
                sync(device)
                began = time.perf_counter()
            idx = torch.randint(len(x), (batch,), device=device)
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(net(x[idx]), y[idx]).backward()
            opt.step()
        sync(device)
        total += time.perf_counter() - began
    return total / (models * steps)


def packed(template, factory, x, y, batch, steps, epoch_steps, k, device, bf16, mixed=False, compiled=False) -> float:
    """Seconds per individual-epoch of train_pack with k individuals, from epochs of 2 and of
    `steps` steps: the epoch's fixed work (optimizer set-up, data orders, the fitness evaluation)
    counted once, its steps scaled to `epoch_steps` (with steps <= 2: all of it scaled). `mixed`:
    the five optimizer families, each family's individuals side by side as the train step packs
    them, instead of Nesterov SGD for all. `compiled`: torch.compile, whose compilation the
    first warm-up pays: every pack of one template shares the compiled code, as a run's packs do,
    so the caller passes one template for all measurements of a model."""
    hps = [hp(batch, FAMILIES[i * len(FAMILIES) // k] if mixed else "nesterov") for i in range(k)]
    n = batch * steps
    task = Task(model=factory, train=(x[:n], y[:n]), fitness=(x[:batch], y[:batch]), eval_batch_size=batch)

    def once(steps_n):
        pack = Pack.from_models([template] + [factory().to(device) for _ in range(k - 1)])
        sub = (x[: batch * steps_n], y[: batch * steps_n])
        sync(device)
        began = time.perf_counter()
        train_pack(
            pack,
            task,
            sub,
            task.fitness,
            hps,
            1,
            [math.inf] * k,
            1.0,
            [(0, 0, f"m{i}") for i in range(k)],
            bf16=bf16,
            compiled=compiled,
        )
        sync(device)
        return time.perf_counter() - began

    once(2)  # warm-up (allocations, cudnn autotuning, compilation)
    whole = once(steps)
    if steps <= 2:
        return whole * epoch_steps / steps / k
    per_step = (whole - once(2)) / (steps - 2)
    return (whole + (epoch_steps - steps) * per_step) / k


def generation_share(device: str, generations: int, task_args: dict, epochs: int) -> tuple[float, float]:
    """(share of a local generation spent outside training and fitness evaluation, seconds per
    generation), from a real local run of the bundled task; generation 1 (task loading, first
    kernels) is not counted."""
    from esgd.controller.local import execute
    from esgd.controller.runs import create_or_resume
    from esgd.core.spec import parse_spec
    from esgd.store.local import LocalStore
    from esgd.worker import steps

    inside = [0.0]

    def timed(fn):
        def wrapper(*args, **kwargs):
            began = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                inside[0] += time.perf_counter() - began

        return wrapper

    originals = {name: getattr(steps, name) for name in ("train_member", "train_pack", "fitness", "pack_fitness")}
    for name, fn in originals.items():  # what the steps call
        setattr(steps, name, timed(fn))
    spec = parse_spec(
        {
            "generations": generations + 1,
            "population": {"mu": 16, "offspring": 16},
            "task_args": task_args,
            "sgd": {"batch_size": [64], "epochs": epochs},
            "device": device,
        }
    )
    marks = []
    with tempfile.TemporaryDirectory() as tmp:
        store = LocalStore(tmp)
        run, _ = create_or_resume(store, spec, "bench")
        execute(
            run,
            device,
            progress=lambda line: line.startswith("gen ") and marks.append((time.perf_counter(), inside[0])),
        )
    for name, fn in originals.items():
        setattr(steps, name, fn)
    (t0, i0), (t1, i1) = marks[0], marks[-1]
    return 1 - (i1 - i0) / (t1 - t0), (t1 - t0) / (len(marks) - 1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devices", default="auto", help="cpu, cuda or auto (cpu, plus cuda when present)")
    p.add_argument("--models", default="mlp,mlp-wide,resnet20")
    p.add_argument("--ks", default="1,8,32,64")
    p.add_argument("--steps", type=int, help="steps per measurement (default: 20 mlp / 5 resnet20 on cpu; 30 on cuda)")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast for packed training (CUDA)")
    p.add_argument(
        "--mixed-k", type=int, default=16, help="also time a pack of this many with five optimizer families (0: no)"
    )
    p.add_argument(
        "--compile", action="store_true", help="also time packed training through torch.compile (pack.compile)"
    )
    p.add_argument("--quick", action="store_true", help="fewer steps and fewer configurations: minutes, not hours")
    p.add_argument("--generations", type=int, default=3, help="generations measured for the outside-share (0: skip it)")
    args = p.parse_args()
    devices = (
        ["cpu"] + (["cuda"] if torch.cuda.is_available() else []) if args.devices == "auto" else args.devices.split(",")
    )
    ks = [int(k) for k in args.ks.split(",")]
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"{torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'}"
    )
    print("| device | model | how | s per individual-epoch | vs sequential |")
    print("|---|---|---|---|---|")
    for device_name in devices:
        device = torch.device(device_name)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
            warm_up(device)
        for name in args.models.split(","):
            factory, shape, classes, batch, epoch = MODELS[name]
            cpu_resnet = device.type == "cpu" and name == "resnet20"
            steps = args.steps or (30 if device.type == "cuda" else (3 if cpu_resnet else 20))
            if args.quick:
                steps = max(2, steps // 2)
            model_ks = [k for k in ks if not (cpu_resnet and k > 8)]  # 32+ ResNet-20s on 2 cores: hours
            x, y = data(shape, classes, batch * max(steps, 2), device)
            template = factory().to(device)
            per_epoch = epoch / batch
            repeats = 1 if cpu_resnet else 3  # best of a few: the CPU numbers are noisy
            base = (
                min(sequential(factory, x, y, batch, steps, 2 if cpu_resnet else 4, device) for _ in range(repeats))
                * per_epoch
            )
            print(f"| {device_name} | {name} | sequential loop, fp32 | {base:.4f} | 1.0x |", flush=True)
            bf16 = args.bf16 and device.type == "cuda"
            for k in model_ks:
                for compiled in (False, True) if args.compile else (False,):
                    t = min(
                        packed(template, factory, x, y, batch, steps, per_epoch, k, device, bf16, compiled=compiled)
                        for _ in range(repeats)
                    )
                    how = f"packed k={k}{' bf16' if bf16 else ''}{' compiled' if compiled else ''}"
                    print(f"| {device_name} | {name} | {how} | {t:.4f} | {base / t:.1f}x |", flush=True)
            if args.mixed_k and not cpu_resnet:
                k = args.mixed_k
                t = min(
                    packed(template, factory, x, y, batch, steps, per_epoch, k, device, bf16, mixed=True)
                    for _ in range(repeats)
                )
                print(
                    f"| {device_name} | {name} | packed k={k}, 5 optimizer families | {t:.4f} | {base / t:.1f}x |",
                    flush=True,
                )
    workloads = {  # the bundled task as shipped, and the same data with 16x the training work
        "digits MLP 32x2, 1 epoch": ({"hidden": 32}, 1),
        "digits MLP 256x3, 4 epochs": ({"hidden": 256, "depth": 3}, 4),
    }
    for device_name in devices if args.generations else []:
        for label, (task_args, epochs) in workloads.items():
            share, seconds = generation_share(device_name, args.generations, task_args, epochs)
            print(
                f"local generation on {device_name}, {label} (mu=16, lambda=16, packed): "
                f"{seconds:.3f} s per generation, {share:.1%} outside training and fitness evaluation "
                f"({share * seconds / 32 * 1e3:.1f} ms per individual)",
                flush=True,
            )


if __name__ == "__main__":
    main()
