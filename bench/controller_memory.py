"""Peak memory of the cluster controller, `esgd controller`, on the CIFAR-10 recipe with a full-size
(synthetic) import: starting the run from its spec, and resuming it by its URI.

    .venv/bin/python bench/controller_memory.py [--images 50000] [--python PYTHON]

Writes CIFAR-10-format batches of random images (5 x images/5 training, a test batch), imports them
with `esgd data import cifar10` into a local store, then runs the controller in a fresh process
whose Kubernetes API is a stub: every Workflow it submits ends as one whose first pod refused its
input, so the controller does all it does for a run up to its first Workflow and stops. Prints the
process's peak resident memory (ru_maxrss), and whether it imported torch. `--python` runs the
controller with another interpreter (e.g. another checkout's virtualenv), for an A/B.
"""

import argparse
import pickle
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CONTROLLER = """
import resource, sys
import esgd.controller.argo as argo

class RefusedByTheFirstPod:
    def __init__(self, **settings):
        self.objects = {}

    def installed(self, namespace):
        pass

    def get(self, namespace, name):
        return self.objects.get(name)

    def create(self, namespace, body, dry_run=False):
        pod = {"type": "Pod", "phase": "Failed", "displayName": "init", "outputs": {"exitCode": "2"},
               "message": "Error (exit code 2)"}
        self.objects[body["metadata"]["name"]] = {"status": {"phase": "Failed", "message": "", "nodes": {"p": pod}}}

argo.KubernetesWorkflows = RefusedByTheFirstPod
try:
    from esgd.cli.main import main
except ImportError:
    from esgd.controller.cli import main
main(sys.argv[1:] + ["--namespace", "esgd"])
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(f"peak {peak:.0f} MiB, torch imported: {'torch' in sys.modules}")
"""


def write_batches(folder: Path, images: int) -> None:
    """cifar-10-batches-py/ with random uint8 images: 5 training batches and a test batch."""
    rng = np.random.default_rng(0)
    out = folder / "cifar-10-batches-py"
    out.mkdir(parents=True)
    per_batch = images // 5
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, per_batch)]
        (out / name).write_bytes(pickle.dumps({b"data": data, b"labels": labels}, protocol=4))


def controller(python: str, *args: str) -> str:
    done = subprocess.run([python, "-c", CONTROLLER, *args], capture_output=True, text=True, timeout=600)
    return done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr.strip()[-500:]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=50_000, help="training images (default: CIFAR-10's 50,000)")
    p.add_argument("--python", default=sys.executable, help="interpreter that runs the controller")
    args = p.parse_args()
    esgd = str(Path(sys.executable).parent / "esgd")
    with tempfile.TemporaryDirectory() as tmp:
        write_batches(Path(tmp) / "source", args.images)
        store = f"{tmp}/store"
        data = subprocess.run(
            [esgd, "data", "import", "cifar10", f"{tmp}/source", "--store", store],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        spec = str(ROOT / "examples" / "cifar10-resnet20.yaml")
        common = ["--store", store, "--run-id", "memory", "--set", f"task_args.data={data}"]
        print(f"CIFAR-10 recipe, {args.images} training images imported; controller: {args.python}")
        print(f"  start from the spec:  {controller(args.python, 'controller', spec, *common)}")
        print(f"  resume by the URI:    {controller(args.python, 'controller', f'{store}/runs/memory')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
