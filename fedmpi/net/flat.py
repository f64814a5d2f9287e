"""Flat buffers: many tensors moved as one, so a round costs one collective."""
from __future__ import annotations

from typing import Sequence

import torch


def payload_bytes(tensors: torch.Tensor | Sequence[torch.Tensor]) -> int:
    """What a deployment sends: numel x element size of each tensor."""
    if isinstance(tensors, torch.Tensor):
        tensors = [tensors]
    return sum(t.numel() * t.element_size() for t in tensors)


def flatten(tensors: Sequence[torch.Tensor], dtype: torch.dtype | None = None,
            extra: int = 0, out: torch.Tensor | None = None) -> torch.Tensor:
    """Concatenate tensors into one 1-D buffer, with `extra` zeroed slots at the end
    (`out`: into that buffer, which must have the size, instead of a fresh one)."""
    dtype = out.dtype if out is not None else dtype or (tensors[0].dtype if tensors else torch.float32)
    device = out.device if out is not None else tensors[0].device if tensors else torch.device("cpu")
    if out is None and not extra and tensors and all(t.dtype == dtype and t.device == device for t in tensors):
        # One pass (cat writes into fresh memory) instead of zero-filling then copying: a
        # client's whole state is flattened once per upload, which counts at 1000s of clients.
        return torch.cat([t.detach().reshape(-1) for t in tensors])
    total = sum(t.numel() for t in tensors)
    if out is None:
        out = torch.zeros(total + extra, dtype=dtype, device=device)
    elif out.numel() != total + extra:
        raise ValueError(f"flatten: out holds {out.numel()} values, the tensors {total} + {extra}")
    else:
        out[total:].zero_()
    offset = 0
    for t in tensors:
        n = t.numel()
        out[offset:offset + n].copy_(t.detach().reshape(-1))
        offset += n
    return out


def unflatten_into(buffer: torch.Tensor, tensors: Sequence[torch.Tensor]) -> None:
    """Copy slices of a flat buffer back into tensors (in place, casting dtype)."""
    offset = 0
    with torch.no_grad():
        for t in tensors:
            n = t.numel()
            t.copy_(buffer[offset:offset + n].view(t.shape))
            offset += n
