"""One-off sync of frozen state a method derived (FeDeRA's SVD residual), as an engine plug-in.

A real deployment computes such weights once on the server and ships them,
so the server's copy is broadcast to every rank before round 0 and charged to
every client's downlink as kind `init`, with the server's FLOPs for deriving
them as one server row of the same kind (on a fresh start only: a resumed
run's clients already hold them). Work a method has every client do for
itself instead (FeDeRA's `client_svd`) is one local row of kind `init` per
client, on that client's device. Afterwards each rank hashes its whole model
and the server records the digests (`init.json`), which proves every rank
starts from bitwise the same model.
"""
from __future__ import annotations

import json

from fedmpi.engine.callbacks import Callback
from fedmpi.engine.context import Context
from fedmpi.models.sync import CLIENT_FLOPS_ATTR, FLOPS_ATTR, model_digest, synced_tensors
from fedmpi.net.flat import flatten, unflatten_into

INIT_KIND = "init"


class InitialSync(Callback):
    def on_setup(self, ctx: Context) -> None:
        link, charge = ctx.link, ctx.fresh_start
        tensors = synced_tensors(ctx.model)
        nbytes = 0
        if tensors:
            clients = list(range(ctx.cfg.federation.num_clients)) if charge else []
            received = link.broadcast(flatten(tensors), kind=INIT_KIND, clients=clients)
            unflatten_into(received, tensors)
            nbytes = received.numel() * received.element_size()
        flops = getattr(ctx.model, FLOPS_ATTR, 0)
        if charge and flops:
            link.charge_server(INIT_KIND, flops)
        client_flops = getattr(ctx.model, CLIENT_FLOPS_ATTR, 0)
        if charge and client_flops:
            for c in range(ctx.cfg.federation.num_clients):
                link.charge_compute(c, client_flops, kind=INIT_KIND)
        digests = link.gather(model_digest(ctx.model))
        if ctx.rt.is_server and ctx.run_dir is not None:
            record = {"digests": digests, "identical": len(set(digests)) == 1,
                      "synced_tensors": len(tensors), "init_bytes_per_client": nbytes,
                      "init_flops_per_client": client_flops}
            (ctx.run_dir / "init.json").write_text(json.dumps(record, indent=2) + "\n")
