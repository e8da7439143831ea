"""A run as a worker step sees it: the run (store, id, frozen spec), the device, the task and its
data on that device, and how the step moves its objects (set by whoever runs the step)."""

import sys
from functools import cached_property

import numpy as np
import torch

from esgd.core.errors import InputError
from esgd.core.records import BlobRef
from esgd.store import checkpoint
from esgd.store.blobs import Blobs
from esgd.store.run import RunRef
from esgd.worker.packed import Pack
from esgd.worker.task import Task, load_task
from esgd.worker.transfers import Transfers
from esgd.worker.weights import load_into, to_checkpoint

MAX_AUTO_PACK = 64


def resolve_device(name: str | None) -> torch.device:
    """auto: a GPU if any, else the CPU. Raises InputError for a device this machine lacks."""
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise InputError(f"device: {error}") from None
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise InputError(f"device: {name} requested, but this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type not in ("cpu", "cuda"):
        raise InputError(f"device: {name} is not supported (use auto, cpu, cuda or cuda:N)")
    return device


class Run:
    def __init__(self, ref: RunRef, device: str | None = None, keep: int = 0, transfers: Transfers | None = None):
        """The engine's choices: `keep`, bytes of what this process writes to keep for reading back
        (esgd.store.blobs.Kept), for an engine that runs every step of the run in this process (0
        keeps nothing); `transfers`, how many objects a step moves at once (default:
        Transfers.for_store, from what the store says of itself)."""
        self.ref, self.store, self.id, self.spec = ref, ref.store, ref.id, ref.spec
        self.device = resolve_device(device or self.spec.device)
        self.transfers = transfers or Transfers.for_store(self.store)
        self.blobs = Blobs(self.store, keep)
        self.manifests: dict[str, list] = {}  # key -> rows: manifests never change once written

    @classmethod
    def open(cls, uri: str, device: str | None = None) -> "Run":
        return cls(RunRef.open(uri), device)

    @property
    def uri(self) -> str:
        return self.ref.uri

    @cached_property
    def task(self) -> Task:
        return load_task(self.spec.task, self.spec.task_args)

    @cached_property
    def train_data(self) -> tuple[torch.Tensor, ...]:
        return tuple(t.to(self.device) for t in self.task.train)

    @cached_property
    def fitness_data(self) -> tuple[torch.Tensor, ...]:
        return tuple(t.to(self.device) for t in self.task.fitness)

    @cached_property
    def test_data(self) -> tuple[torch.Tensor, ...] | None:
        return None if self.task.test is None else tuple(t.to(self.device) for t in self.task.test)

    def pack_size(self, pending: int) -> int:
        """Individuals per pack: the spec's number, or auto (all pending, at most 64; on a GPU as
        many as 80 % of its free memory holds; on the CPU 1 for convolutional models, whose
        vmapped convolutions run slower than a loop there: bench/packing.py); 1 when the model
        cannot be packed (vmap does not support every module)."""
        size = self.spec.pack.size
        if size == "auto":
            size = min(max(pending, 1), MAX_AUTO_PACK)
            if self.device.type == "cpu" and self.convolutional:
                size = 1
            elif self.device.type == "cuda":
                free, _ = torch.cuda.mem_get_info(self.device)
                size = max(1, min(size, int(0.8 * free / self.memory_per_individual)))
        return size if size == 1 or self.packable else 1

    @cached_property
    def convolutional(self) -> bool:
        return any(isinstance(m, torch.nn.modules.conv._ConvNd) for m in self.new_model().modules())

    @cached_property
    def memory_per_individual(self) -> int:
        """CUDA bytes one packed individual needs: one measured training step of one model at the
        largest batch size (weights, gradient, activations), plus up to 3 optimizer states and the
        back-off snapshot of the weights and states: at most 7 more copies of the weights."""
        data = self.train_data  # on the device before measuring: shared by the pack, not per individual
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        before = torch.cuda.memory_allocated(self.device)
        model = self.new_model()
        batch = max(self.spec.sgd.batch_size)
        self.task.loss(model(data[0][:batch]), data[1][:batch]).backward()
        peak = torch.cuda.max_memory_allocated(self.device) - before
        weights = sum(p.numel() * p.element_size() for p in model.parameters())
        return peak + 7 * weights

    @cached_property
    def packable(self) -> bool:
        try:
            pack = Pack.from_models([self.new_model(), self.new_model()])
            pack.forward(torch.stack([self.train_data[0][:2]] * 2))
            pack.checkpoints()
            return True
        except Exception as error:  # noqa: BLE001 - any failure means: train one at a time
            print(
                f"esgd: this model cannot be packed ({type(error).__name__}: {error}); training one at a time",
                file=sys.stderr,
            )
            return False

    def seed(self, generation: int, member: str) -> tuple:
        return (self.spec.seed, generation, member)

    def new_model(self) -> torch.nn.Module:
        return self.task.model().to(self.device)

    @cached_property
    def template(self) -> torch.nn.Module:
        """One model of the architecture, never trained: packs take their structure from it."""
        return self.new_model()

    def read_checkpoint(self, ref: BlobRef) -> tuple[checkpoint.Layout, np.ndarray]:
        """A checkpoint (layout, vector) from its reference, checksum verified."""
        return checkpoint.decode(self.blobs.get(ref))

    def load_model(self, ref: BlobRef) -> torch.nn.Module:
        model = self.new_model()
        load_into(model, *self.read_checkpoint(ref))
        return model

    def load_pack(self, refs: list[BlobRef]) -> Pack:
        return Pack.from_checkpoints(self.template, self.transfers.each(self.read_checkpoint, refs))

    def save_checkpoint(self, key: str, layout: checkpoint.Layout, vector: np.ndarray) -> BlobRef:
        return self.blobs.put(key, checkpoint.encode(layout, vector))

    def save_model(self, model: torch.nn.Module, key: str) -> BlobRef:
        return self.save_checkpoint(key, *to_checkpoint(model))
