"""`transport.down_delta`: the global model goes down as an encoded difference.

The server keeps one reference model R, what every client that downloaded in the
last round holds. Each round it encodes g - R with the down codec, and
R <- R + decode(encode(g - R)). Clients sampled in the previous round already hold
the old R: they are charged the encoded difference. Every other sampled client
missed rounds and gets R itself, whole, at fp32 size. Either way every sampled
client trains from the same R, so results stay independent of which client got
what; only the bytes (and so the emulated time) differ per client. Round 0 sends
the model whole to everyone.
"""
from __future__ import annotations

import torch

from fedmpi.engine.sampling import sample_clients
from fedmpi.metering.ledger import DOWN
from fedmpi.net.flat import payload_bytes


class DeltaDownlink:
    def __init__(self, link, cfg) -> None:
        self.link, self.cfg = link, cfg
        self.reference: torch.Tensor | None = None  # R (server)

    def holders(self, rnd: int, sampled: list[int]) -> set[int]:
        """Sampled clients that downloaded last round's model (every rank can tell)."""
        if rnd == 0:
            return set()
        fed, cfg = self.cfg.federation, self.cfg
        before = sample_clients(fed.num_clients, fed.clients_per_round, cfg.seed, rnd - 1, fed.over_selection,
                                fed.sampling)
        return set(before) & set(sampled)

    def send(self, flat: torch.Tensor, kind: str, rnd: int, sampled: list[int]) -> torch.Tensor:
        """Collective: this round's R on every rank, each sampled client charged its bytes."""
        link = self.link
        delta_bytes = 0
        if link.rt.is_server:
            if self.reference is None:
                self.reference = flat.clone()
            else:
                sent = link.encode(DOWN, kind, flat, -1, reference=self.reference)
                self.reference, delta_bytes = sent.received, sent.nbytes
            payload = self.reference.clone()
        else:
            payload = torch.empty_like(flat)
        link.broadcast_payload(payload)
        delta_bytes = link.share(delta_bytes)
        full = payload_bytes(payload)
        holders = self.holders(rnd, sampled)
        link.charge_download(kind, {c: (delta_bytes if c in holders else full) for c in sampled}, full)
        return payload

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {} if self.reference is None else {"reference": self.reference.detach().cpu()}

    def load_state_dict(self, state: dict[str, torch.Tensor], device: torch.device) -> None:
        if "reference" in state:
            self.reference = state["reference"].to(device)
