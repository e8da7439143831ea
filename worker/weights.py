"""state_dict <-> checkpoint (layout + flat vector), so models travel as Arrow, never as pickle.

The conversions work on stacked state dicts ([k, ...] tensors, one row per individual), so a pack
of k individuals is read and written without building k modules; one model is the case k = 1."""

import numpy as np
import torch

from esgd.store.checkpoint import Entry, Layout


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def to_checkpoints(state: dict[str, torch.Tensor], params: set[str]) -> list[tuple[Layout, np.ndarray]]:
    """k checkpoints from a stacked state dict in state-dict order; `params` names the parameters
    (every name of a tied weight), the other float tensors are buffers."""
    k = len(next(iter(state.values())))
    floats = {name: t for name, t in state.items() if t.is_floating_point()}
    vector_dtype = "float64" if any(t.dtype == torch.float64 for t in floats.values()) else "float32"
    entries, offset = [], 0
    for name, tensor in floats.items():
        entry = Entry(
            name, list(tensor.shape[1:]), _dtype_name(tensor.dtype), "param" if name in params else "buffer", offset
        )
        entries.append(entry)
        offset += entry.numel
    if floats:  # one host copy for the whole pack
        matrix = (
            torch.cat([t.detach().reshape(k, -1).to(getattr(torch, vector_dtype)) for t in floats.values()], dim=1)
            .cpu()
            .numpy()
        )
    else:
        matrix = np.zeros((k, 0), dtype=vector_dtype)
    ints = {name: t.detach().cpu() for name, t in state.items() if not t.is_floating_point()}
    return [
        (
            Layout(
                entries,
                {
                    name: {
                        "shape": list(t.shape[1:]),
                        "dtype": _dtype_name(t.dtype),
                        "values": t[i].reshape(-1).tolist(),
                    }
                    for name, t in ints.items()
                },
                vector_dtype,
            ),
            matrix[i],
        )
        for i in range(k)
    ]


def to_checkpoint(model: torch.nn.Module) -> tuple[Layout, np.ndarray]:
    params = {name for name, _ in model.named_parameters(remove_duplicate=False)}  # tied weights: every name
    return to_checkpoints({name: t.unsqueeze(0) for name, t in model.state_dict().items()}, params)[0]


def stacked_state(
    checkpoints: list[tuple[Layout, np.ndarray]], device: torch.device | str = "cpu"
) -> dict[str, torch.Tensor]:
    """The stacked state dict ([k, ...] tensors on `device`) of k checkpoints of one architecture."""
    layout = checkpoints[0][0]
    for other, _ in checkpoints[1:]:
        if not layout.same_shape(other) or other.ints.keys() != layout.ints.keys():
            raise ValueError("the checkpoints are of different architectures")
    k = len(checkpoints)
    matrix = torch.from_numpy(np.stack([vector for _, vector in checkpoints])).to(device)  # one transfer for the pack
    state = {
        e.name: matrix[:, e.offset : e.offset + e.numel].reshape(k, *e.shape).to(getattr(torch, e.dtype), copy=True)
        for e in layout.entries
    }
    for name, spec in layout.ints.items():
        values = [other.ints[name]["values"] for other, _ in checkpoints]
        state[name] = torch.tensor(values, dtype=getattr(torch, spec["dtype"])).reshape(k, *spec["shape"]).to(device)
    return state


def load_into(model: torch.nn.Module, layout: Layout, vector: np.ndarray) -> None:
    """Copy a checkpoint into a model of the same architecture (strict: every key must match)."""
    model.load_state_dict({name: t[0] for name, t in stacked_state([(layout, vector)]).items()}, strict=True)
