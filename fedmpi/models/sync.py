"""Frozen state a method derived from the checkpoint, marked for a one-off sync.

Most frozen weights come from disk and are identical on every rank by
construction. Some methods rewrite frozen weights (FeDeRA's SVD residual);
a method marks them here, and the engine's initial-sync plug-in
(plugins/init_sync.py) ships the server's copy to every client once.
"""
from __future__ import annotations

import hashlib

import torch
from torch import nn

SYNC_ATTR = "_fedmpi_synced"
FLOPS_ATTR = "_fedmpi_sync_flops"
CLIENT_FLOPS_ATTR = "_fedmpi_client_init_flops"
INIT_KIND = "init"


def mark_synced(model: nn.Module, names: list[str], flops: int = 0) -> nn.Module:
    """Declare frozen parameters (by name) that the server must distribute once,
    and the FLOPs the server spent deriving them (charged once, kind init)."""
    setattr(model, SYNC_ATTR, list(getattr(model, SYNC_ATTR, [])) + list(names))
    setattr(model, FLOPS_ATTR, getattr(model, FLOPS_ATTR, 0) + int(flops))
    return model


def mark_client_work(model: nn.Module, flops: int) -> nn.Module:
    """Declare one-off work every client does itself before round 0 (e.g. FeDeRA's
    SVD when each client derives the residual): charged once per client, kind init."""
    setattr(model, CLIENT_FLOPS_ATTR, getattr(model, CLIENT_FLOPS_ATTR, 0) + int(flops))
    return model


def synced_tensors(model: nn.Module) -> list[torch.Tensor]:
    params = dict(model.named_parameters())
    return [params[n] for n in getattr(model, SYNC_ATTR, [])]


def model_digest(model: nn.Module) -> str:
    """sha256 over every parameter and buffer, in name order."""
    h = hashlib.sha256()
    for name, t in sorted(list(model.named_parameters()) + list(model.named_buffers()), key=lambda kv: kv[0]):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
