"""Sample-weighted averaging of client states, over the clients that arrived.

Each rank sums its own clients' weighted states into one flat buffer, with a
block of per-client statistics appended, and one collective carries it to the
server. Accumulating in float64 makes the sum independent of how clients are
packed into ranks. Dropouts and deadline stragglers are decided on the
client's own rank; over-selection (keep the first k to finish) needs the
server to see every finish time first, so it costs one extra small collective.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from fedmpi.metering.ledger import LOCAL, SERVER

FIELDS = ("num_samples", "loss_sum", "flops", "seconds", "arrived", "server_flops")
NSTAT = len(FIELDS)


@dataclass
class ClientResult:
    client: int
    state: torch.Tensor | None  # flat trained state; None if the client dropped out
    num_samples: int = 0
    loss_sum: float = 0.0
    flops: int = 0  # client compute
    seconds: float = 0.0  # emulated download + compute + upload
    server_flops: int = 0  # server compute spent on this client (split learning)
    arrived: bool = True


def sample_clients(num_clients: int, per_round: int, seed: int, rnd: int, over_selection: float = 1.0) -> list[int]:
    """Clients of a round, from an RNG of (seed, round) alone."""
    k = min(num_clients, math.ceil(per_round * over_selection))
    rng = np.random.default_rng([seed, rnd, 0x5A3B])
    return sorted(int(c) for c in rng.choice(num_clients, size=k, replace=False))


def drops_out(seed: int, rnd: int, client: int, p: float) -> bool:
    """Whether a sampled client fails this round (emulated dropout)."""
    return p > 0 and np.random.default_rng([seed, rnd, client, 0xD0]).random() < p


def _round_buffer(buffers: dict[str, torch.Tensor], kind: str, size: int, dtype: torch.dtype,
                  device: torch.device) -> torch.Tensor:
    """An accumulation buffer (not zeroed) from the experiment's reused work buffers:
    the average `finish()` returns is valid until the next round's Aggregator of
    the same kind (FedAvg copies it into the model at once)."""
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


class Aggregator:
    def __init__(self, exp, sampled: list[int], numel: int, upload_bytes: int, kind: str = "update") -> None:
        self.exp = exp
        self.sampled = sampled
        self.slot = {c: i for i, c in enumerate(sampled)}
        self.numel = numel
        self.upload_bytes = upload_bytes
        self.kind = kind
        fed = exp.cfg.federation
        self.dtype = torch.float64 if fed.aggregation_dtype == "float64" else torch.float32
        self.deadline = fed.deadline_s
        self.keep = fed.clients_per_round if fed.over_selection > 1 else None
        device = exp.rt.device
        self.stats = torch.zeros(len(sampled), NSTAT, dtype=torch.float64, device=device)
        self.held: dict[int, ClientResult] = {}
        # Stats ride at the tail of the update buffer (one collective a round);
        # only over-selection, which must rank every finish time first, sends
        # them on their own before the update.
        self.two_phase = self.keep is not None
        tail = 0 if self.two_phase else stats_width(len(sampled), self.dtype)
        self.acc = _round_buffer(exp.buffers, kind, numel + tail, self.dtype, device)
        self.empty = True  # nothing summed yet: the first add writes instead of adding

    def add(self, r: ClientResult) -> None:
        """Fold one client's result into this rank's partial sum."""
        if r.state is None or (self.deadline is not None and r.seconds > self.deadline):
            r.arrived = False  # dropped out, or a straggler cut at the deadline
        self.stats[self.slot[r.client]] = torch.tensor(
            [r.num_samples, r.loss_sum, r.flops, r.seconds, float(r.arrived), r.server_flops], dtype=torch.float64)
        if not r.arrived:
            return
        if self.two_phase:
            self.held[r.client] = r
        else:
            self._accumulate(r)

    def _accumulate(self, r: ClientResult) -> None:
        """acc += n * state, in the buffer's dtype; the first write skips the
        zeroing pass (0 + n*x is n*x, bitwise)."""
        acc = self.acc[: self.numel]
        if not self.empty:
            acc.add_(r.state, alpha=r.num_samples)  # mixed dtype: computed in acc's dtype
        elif r.state.dtype == self.dtype:
            torch.mul(r.state, r.num_samples, out=acc)
        else:
            acc.copy_(r.state).mul_(r.num_samples)
        self.empty = False

    def _arrived(self, stats: torch.Tensor) -> list[int]:
        return [c for c, i in self.slot.items() if stats[i, 4] > 0]

    def _kept(self, stats: torch.Tensor) -> list[int]:
        """Arrived clients; with over-selection only the first `keep` to finish."""
        arrived = sorted((float(stats[i, 3]), c) for c, i in self.slot.items() if stats[i, 4] > 0)
        return sorted(c for _, c in arrived[: self.keep or len(arrived)])

    def finish(self) -> tuple[torch.Tensor | None, dict[int, dict[str, float]]]:
        """Collective. Server: (average state or None if nobody arrived, per-client stats)."""
        link = self.exp.link
        if self.two_phase:
            stats = link.collect(self.stats)
            kept = link.share(self._kept(stats) if self.exp.rt.is_server else None)
            for c in kept:
                if c in self.held:
                    self._accumulate(self.held[c])
            self.held.clear()
            if self.empty:
                self.acc.zero_()
            link.reduce(self.acc, kind=self.kind, bytes_per_client=self.upload_bytes, clients=kept)
            stats[:, 4] = 0
            for c in kept:
                stats[self.slot[c], 4] = 1
            buffer = self.acc
        else:
            buffer = self.acc
            if self.empty:
                buffer[: self.numel].zero_()
            buffer[self.numel:] = encode_stats(self.stats, self.dtype)
            stats_of = lambda b: decode_stats(b[self.numel:], len(self.sampled))  # noqa: E731
            link.reduce(buffer, kind=self.kind, bytes_per_client=self.upload_bytes,
                        clients=lambda b: self._arrived(stats_of(b)))
            stats = stats_of(buffer)
        if not self.exp.rt.is_server:
            return None, {}
        per_client = {c: dict(zip(FIELDS, stats[i].tolist())) for c, i in self.slot.items()}
        self._record(per_client)
        weight = sum(s["num_samples"] for s in per_client.values() if s["arrived"] > 0)
        if weight <= 0:
            return None, per_client
        return buffer[: self.numel].div_(weight), per_client

    def _record(self, per_client: dict[int, dict[str, float]]) -> None:
        exp = self.exp
        ledger, rnd = exp.ledger, exp.link.round
        for c, s in per_client.items():
            if s["flops"] > 0:
                ledger.add(rnd, c, LOCAL, "compute", flops=int(s["flops"]), seconds=s["flops"] / exp.speeds[c])
            if s["server_flops"] > 0:
                ledger.add(rnd, -1, SERVER, "compute", flops=int(s["server_flops"]),
                           seconds=s["server_flops"] / exp.server_speed)
        arrived = sum(1 for s in per_client.values() if s["arrived"] > 0)
        agg_flops = 2 * self.numel * arrived
        ledger.add(rnd, -1, SERVER, "aggregate", flops=agg_flops, seconds=agg_flops / exp.server_speed)
