"""state_dict <-> checkpoint (layout + flat vector), so models travel as Arrow, never as pickle."""

import numpy as np
import torch

from esgd.store.checkpoint import Entry, Layout


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def to_checkpoint(model: torch.nn.Module) -> tuple[Layout, np.ndarray]:
    params = {name for name, _ in model.named_parameters(remove_duplicate=False)}  # tied weights: every name
    state = model.state_dict()
    floats = {k: v for k, v in state.items() if v.is_floating_point()}
    vector_dtype = "float64" if any(v.dtype == torch.float64 for v in floats.values()) else "float32"
    entries, parts, offset = [], [], 0
    for name, tensor in floats.items():
        entry = Entry(name, list(tensor.shape), _dtype_name(tensor.dtype), "param" if name in params else "buffer", offset)
        entries.append(entry)
        parts.append(tensor.detach().to("cpu", getattr(torch, vector_dtype)).reshape(-1).numpy())
        offset += entry.numel
    ints = {
        k: {"shape": list(v.shape), "dtype": _dtype_name(v.dtype), "values": v.detach().cpu().reshape(-1).tolist()}
        for k, v in state.items()
        if not v.is_floating_point()
    }
    vector = np.concatenate(parts) if parts else np.zeros(0, dtype=vector_dtype)
    return Layout(entries, ints, vector_dtype), vector


def load_into(model: torch.nn.Module, layout: Layout, vector: np.ndarray) -> None:
    """Copy a checkpoint into a model of the same architecture (strict: every key must match)."""
    state = {}
    for e in layout.entries:
        values = torch.from_numpy(np.asarray(vector[e.offset : e.offset + e.numel]).copy())
        state[e.name] = values.reshape(e.shape).to(getattr(torch, e.dtype))
    for name, spec in layout.ints.items():
        state[name] = torch.tensor(spec["values"], dtype=getattr(torch, spec["dtype"])).reshape(spec["shape"])
    model.load_state_dict(state, strict=True)
