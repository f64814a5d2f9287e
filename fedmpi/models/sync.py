"""One-off sync of frozen state that a method derived from the checkpoint.

Most frozen weights come from disk and are identical on every rank by
construction. Some methods rewrite frozen weights (FeDeRA's SVD residual);
a real deployment computes them once on the server and ships them, so here
the server's copy is broadcast to every rank before round 0 and charged to
every client's downlink as kind `init` (with the server's FLOPs for deriving
them as one server row of the same kind). Afterwards each rank hashes its whole
model and the server records the digests (`init.json`), which proves every
rank starts from bitwise the same model.
"""
from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING

import torch
from torch import nn

from fedmpi.metering.ledger import SERVER
from fedmpi.net.flat import flatten, unflatten_into

if TYPE_CHECKING:
    from fedmpi.experiment import Experiment

SYNC_ATTR = "_fedmpi_synced"
FLOPS_ATTR = "_fedmpi_sync_flops"
INIT_KIND = "init"


def mark_synced(model: nn.Module, names: list[str], flops: int = 0) -> nn.Module:
    """Declare frozen parameters (by name) that the server must distribute once,
    and the FLOPs the server spent deriving them (charged once, kind init)."""
    setattr(model, SYNC_ATTR, list(getattr(model, SYNC_ATTR, [])) + list(names))
    setattr(model, FLOPS_ATTR, getattr(model, FLOPS_ATTR, 0) + int(flops))
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


def sync_init(exp: "Experiment", charge: bool = True) -> int:
    """Collective. Broadcast the marked frozen tensors; returns bytes per client.
    `charge=False` on resume: clients already hold them."""
    rt, link = exp.rt, exp.link
    tensors = synced_tensors(exp.model)
    nbytes = 0
    if tensors:
        flat = flatten(tensors)
        clients = list(range(exp.cfg.federation.num_clients)) if charge else []
        link.broadcast(flat, kind=INIT_KIND, clients=clients)
        unflatten_into(flat, tensors)
        nbytes = flat.numel() * flat.element_size()
    flops = getattr(exp.model, FLOPS_ATTR, 0)
    if charge and flops and rt.is_server and exp.ledger is not None:
        exp.ledger.add(link.round, -1, SERVER, INIT_KIND, flops=flops, seconds=flops / exp.server_speed)
    digests = link.gather(model_digest(exp.model))
    if rt.is_server and exp.writer is not None:
        record = {"digests": digests, "identical": len(set(digests)) == 1,
                  "synced_tensors": len(tensors), "init_bytes_per_client": nbytes}
        (exp.writer.dir / "init.json").write_text(json.dumps(record, indent=2) + "\n")
    return nbytes
