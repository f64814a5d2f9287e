"""Sample-weighted sum of client updates over the clients that arrived, in one collective.

Each rank sums its own clients' weighted states into one flat buffer, with a
block of per-client statistics appended, and one collective carries it to the
server. Accumulating in float64 makes the sum independent of how clients are
packed into ranks. Dropouts and deadline stragglers are decided on the
client's own rank; over-selection (keep the first k to finish) needs the
server to see every finish time first, so it costs one extra small collective.
The Link charges each arrived client's upload at its encoded size and its
compute; the server's aggregation FLOPs are one server row.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

FIELDS = ("num_samples", "loss_sum", "flops", "seconds", "arrived", "up_bytes")
NSTAT = len(FIELDS)


@dataclass
class ClientUpdate:
    client: int
    state: torch.Tensor | None  # flat state as the server decodes it; None if the client dropped out
    num_samples: int = 0  # aggregation weight (the client's dataset size)
    loss_sum: float = 0.0  # training loss x weight
    flops: int = 0  # client compute
    seconds: float = 0.0  # emulated download + compute + messages + upload
    up_bytes: int = 0  # the encoded upload
    arrived: bool = True


def round_buffer(buffers: dict[str, torch.Tensor], kind: str, size: int, dtype: torch.dtype,
                 device: torch.device) -> torch.Tensor:
    """An accumulation buffer (not zeroed) reused round after round: the average
    `finish()` returns is valid until the next round's Aggregator of the same
    kind (the engine copies it into the model at once). A fresh 182 MB buffer
    per round costs page faults on every touch."""
    buf = buffers.get(kind)
    if buf is None or buf.numel() != size or buf.dtype != dtype or buf.device != device:
        buffers[kind] = buf = torch.empty(size, dtype=dtype, device=device)
    return buf


def stats_width(clients: int, dtype: torch.dtype) -> int:
    """Slots the per-client stats take in an update buffer of `dtype`."""
    return clients * NSTAT * (1 if dtype == torch.float64 else 3)


def encode_stats(stats: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Float64 stats as `dtype` limbs that sum back exactly. A float32 buffer
    carries each value as hi + mid + lo (3 x 24 mantissa bits >= 53), so FLOP
    counts stay exact; only the owning rank writes a client's slot and the
    others add zeros, so the reduction changes no bit."""
    flat = stats.reshape(-1)
    if dtype == torch.float64:
        return flat
    hi = flat.to(dtype)
    rest = flat - hi.to(torch.float64)
    mid = rest.to(dtype)
    lo = (rest - mid.to(torch.float64)).to(dtype)
    return torch.cat([hi, mid, lo])


def decode_stats(block: torch.Tensor, clients: int) -> torch.Tensor:
    if block.dtype != torch.float64:
        block = block.to(torch.float64).reshape(3, -1).sum(0)
    return block.reshape(clients, NSTAT)


class WeightedSum:
    """acc = sum of w_i * x_i, in acc's dtype. The first add writes instead of adding
    (0 + w*x is w*x, bitwise), so acc need not be zeroed; mixed-dtype adds are
    computed in acc's dtype, bitwise the same as casting first."""

    def __init__(self, acc: torch.Tensor) -> None:
        self.acc = acc
        self.empty = True
        self.weight = 0.0

    def add(self, x: torch.Tensor, w: float) -> None:
        if not self.empty:
            self.acc.add_(x, alpha=w)
        elif x.dtype == self.acc.dtype:
            torch.mul(x, w, out=self.acc)
        else:
            self.acc.copy_(x).mul_(w)
        self.empty = False
        self.weight += w

    def total(self) -> torch.Tensor:
        if self.empty:
            self.acc.zero_()
            self.empty = False
        return self.acc


class Aggregator:
    """One round's weighted mean. `add` on the clients' ranks, `finish` everywhere."""

    def __init__(self, link, fed, buffers: dict[str, torch.Tensor], sampled: list[int], numel: int,
                 kind: str = "update") -> None:
        self.link = link
        self.sampled = sampled
        self.slot = {c: i for i, c in enumerate(sampled)}
        self.numel = numel
        self.kind = kind
        self.dtype = torch.float64 if fed.aggregation_dtype == "float64" else torch.float32
        self.deadline = fed.deadline_s
        self.keep = fed.clients_per_round if fed.over_selection > 1 else None
        device = link.rt.device
        self.stats = torch.zeros(len(sampled), NSTAT, dtype=torch.float64, device=device)
        self.held: dict[int, ClientUpdate] = {}
        # Stats ride at the tail of the update buffer (one collective a round);
        # only over-selection, which must rank every finish time first, sends
        # them on their own before the update.
        self.two_phase = self.keep is not None
        tail = 0 if self.two_phase else stats_width(len(sampled), self.dtype)
        self.acc = round_buffer(buffers, kind, numel + tail, self.dtype, device)
        self.sum = WeightedSum(self.acc[:numel])

    def add(self, r: ClientUpdate) -> None:
        """Fold one client's update into this rank's partial sum."""
        if r.state is None or (self.deadline is not None and r.seconds > self.deadline):
            r.arrived = False  # dropped out, or a straggler cut at the deadline
        self.stats[self.slot[r.client]] = torch.tensor(
            [r.num_samples, r.loss_sum, r.flops, r.seconds, float(r.arrived), r.up_bytes], dtype=torch.float64)
        if not r.arrived:
            return
        if self.two_phase:
            self.held[r.client] = r
        else:
            self._accumulate(r)

    def _accumulate(self, r: ClientUpdate) -> None:
        self.sum.add(r.state, r.num_samples)

    def _uploads(self, stats: torch.Tensor, clients: list[int] | None = None) -> dict[int, int]:
        """client -> encoded upload bytes, for the arrived (or the given) clients, in slot order."""
        chosen = [c for c, i in self.slot.items() if stats[i, 4] > 0] if clients is None else clients
        return {c: int(stats[self.slot[c], 5]) for c in chosen}

    def _kept(self, stats: torch.Tensor) -> list[int]:
        """Arrived clients; with over-selection only the first `keep` to finish."""
        arrived = sorted((float(stats[i, 3]), c) for c, i in self.slot.items() if stats[i, 4] > 0)
        return sorted(c for _, c in arrived[: self.keep or len(arrived)])

    def finish(self) -> tuple[torch.Tensor | None, dict[int, dict[str, float]]]:
        """Collective. Server: (average state or None if nobody arrived, per-client stats)."""
        link = self.link
        if self.two_phase:
            stats = link.collect(self.stats)
            kept = link.share(self._kept(stats) if link.rt.is_server else None)
            for c in kept:
                if c in self.held:
                    self._accumulate(self.held[c])
            self.held.clear()
            self.sum.total()
            link.reduce(self.acc, kind=self.kind, uploads=self._uploads(stats, kept) if link.rt.is_server else {})
            stats[:, 4] = 0
            for c in kept:
                stats[self.slot[c], 4] = 1
        else:
            self.sum.total()
            self.acc[self.numel:] = encode_stats(self.stats, self.dtype)
            stats_of = lambda b: decode_stats(b[self.numel:], len(self.sampled))  # noqa: E731
            link.reduce(self.acc, kind=self.kind, uploads=lambda b: self._uploads(stats_of(b)))
            stats = stats_of(self.acc)
        if not link.rt.is_server:
            return None, {}
        per_client = {c: dict(zip(FIELDS, stats[i].tolist())) for c, i in self.slot.items()}
        for c, s in per_client.items():
            if s["flops"] > 0:
                link.charge_compute(c, int(s["flops"]))
        arrived = sum(1 for s in per_client.values() if s["arrived"] > 0)
        link.charge_server("aggregate", 2 * self.numel * arrived)
        weight = sum(s["num_samples"] for s in per_client.values() if s["arrived"] > 0)
        if weight <= 0:
            return None, per_client
        return self.acc[: self.numel].div_(weight), per_client
