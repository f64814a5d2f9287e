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

import math
from dataclasses import dataclass

import torch

FIELDS = ("num_samples", "loss_sum", "flops", "seconds", "arrived", "up_bytes", "extra_bytes", "bit")
NSTAT = len(FIELDS)


@dataclass
class ClientUpdate:
    client: int
    state: torch.Tensor | None  # flat, as the server decodes it (a state or a delta); None: dropped out
    num_samples: int = 0  # aggregation weight (the client's dataset size, or 1)
    loss_sum: float = 0.0  # training loss x its dataset size
    flops: int = 0  # client compute
    seconds: float = 0.0  # emulated download + compute + messages + upload
    up_bytes: int = 0  # the encoded upload
    extra: torch.Tensor | None = None  # a second upload (SCAFFOLD's control variate), averaged unweighted
    extra_bytes: int = 0
    bit: float = 0.0  # one more number per client summed over the arrived (DP's unclipped count)
    arrived: bool = True


@dataclass
class RoundSum:
    """What `finish` gives the server: the aggregate and each client's statistics."""
    value: torch.Tensor | None  # the weighted mean (normalize) or sum; None when nobody arrived
    extra: torch.Tensor | None  # the unweighted mean of the extra uploads
    stats: dict[int, dict[str, float]]
    arrived: list[int]
    weight: float  # sum of the arrived weights
    bits: float  # sum of the arrived clients' `bit`
    stack: torch.Tensor | None = None  # GatherAggregator: every arrived update, n x d, in client order
    weights: torch.Tensor | None = None  # and their weights


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
    """One round's weighted sum (or mean) of the arrived clients' updates, in one collective.
    `add` on the clients' ranks, `finish` everywhere; the buffer is
    [weighted values | extra values | per-client stats]."""

    def __init__(self, link, fed, buffers: dict[str, torch.Tensor], sampled: list[int], numel: int,
                 kind: str = "update", extra_numel: int = 0, extra_kind: str | None = None,
                 normalize: bool = True) -> None:
        self.link = link
        self.sampled = sampled
        self.slot = {c: i for i, c in enumerate(sampled)}
        self.numel, self.extra_numel = numel, extra_numel
        self.kind, self.extra_kind = kind, extra_kind
        self.normalize = normalize
        self.dtype = torch.float64 if fed.aggregation_dtype == "float64" else torch.float32
        self.deadline = fed.deadline_s
        self.keep = fed.clients_per_round if fed.over_selection > 1 else None
        device = link.rt.device
        self.stats = torch.zeros(len(sampled), NSTAT, dtype=torch.float64, device=device)
        self.held: dict[int, ClientUpdate] = {}
        # Stats ride at the tail of the update buffer (one collective a round);
        # only over-selection, which must rank every finish time first, sends
        # them on their own before the update.
        # A shared server link makes each upload's time depend on the others': the
        # server retimes them (and decides the deadline) once it sees everyone's.
        self.shared = not math.isinf(getattr(link, "server_in", math.inf))
        self.transfer: dict[int, float] | None = None
        self.two_phase = self.keep is not None or self.gathers or self.shared
        width = numel + extra_numel
        tail = 0 if self.two_phase else stats_width(len(sampled), self.dtype)
        self.acc = round_buffer(buffers, kind, width + tail, self.dtype, device)
        self.sum = WeightedSum(self.acc[:numel])
        self.extra_sum = WeightedSum(self.acc[numel:width]) if extra_numel else None
        self.raw = {kind: numel * 4, **({extra_kind: extra_numel * 4} if extra_kind else {})}  # fp32 sizes

    gathers = False  # GatherAggregator: every arrived update goes to the server on its own

    def add(self, r: ClientUpdate) -> None:
        """Fold one client's update into this rank's partial sum."""
        if r.state is None or (self.deadline is not None and r.seconds > self.deadline):
            r.arrived = False  # dropped out, or a straggler cut at the deadline
        self.stats[self.slot[r.client]] = torch.tensor(
            [r.num_samples, r.loss_sum, r.flops, r.seconds, float(r.arrived), r.up_bytes, r.extra_bytes, r.bit],
            dtype=torch.float64)
        if not r.arrived:
            return
        if self.two_phase:
            self.held[r.client] = r
        else:
            self._accumulate(r)

    def _accumulate(self, r: ClientUpdate) -> None:
        self.sum.add(r.state, r.num_samples)
        if self.extra_sum is not None:
            self.extra_sum.add(r.extra, 1)

    def _uploads(self, stats: torch.Tensor, clients: list[int] | None = None) -> dict[str, dict[int, int]]:
        """kind -> {client: encoded bytes}, for the arrived (or the given) clients, in slot order."""
        chosen = [c for c, i in self.slot.items() if stats[i, 4] > 0] if clients is None else clients
        out = {self.kind: {c: int(stats[self.slot[c], 5]) for c in chosen}}
        if self.extra_kind is not None:
            out[self.extra_kind] = {c: int(stats[self.slot[c], 6]) for c in chosen}
        return out

    def _kept(self, stats: torch.Tensor) -> list[int]:
        """Arrived clients; with over-selection only the first `keep` to finish."""
        arrived = sorted((float(stats[i, 3]), c) for c, i in self.slot.items() if stats[i, 4] > 0)
        return sorted(c for _, c in arrived[: self.keep or len(arrived)])

    def _reduce_kept(self, kept: list[int], stats: torch.Tensor) -> None:
        """Two-phase: the server chose who counts; sum those (one collective)."""
        for c in kept:
            if c in self.held:
                self._accumulate(self.held[c])
        self.held.clear()
        self.sum.total()
        if self.extra_sum is not None:
            self.extra_sum.total()
        self.link.reduce(self.acc, kind=self.kind, uploads=self._uploads(stats, kept) if self.link.rt.is_server else {},
                         raw=self.raw, transfer=self.transfer)

    def _retime_shared_uploads(self, stats: torch.Tensor) -> None:
        """Server: each arrived client's uploads on the shared server link, starting when
        the client was ready; its finish time and the deadline follow."""
        link = self.link
        starts: dict[int, tuple[float, int]] = {}
        for c, i in self.slot.items():
            if stats[i, 4] > 0:
                up, extra = int(stats[i, 5]), int(stats[i, 6])
                alone = link.seconds(c, "up", up) + (link.seconds(c, "up", extra) if self.extra_kind else 0.0)
                starts[c] = (float(stats[i, 3]) - alone, up + extra)
        self.transfer = link.shared_seconds("up", starts)
        for c, (start, _) in starts.items():
            i = self.slot[c]
            lat = link.profiles[c].latency_ms / 1e3
            messages = 2 if self.extra_kind else 1
            stats[i, 3] = start + (messages - 1) * lat + self.transfer[c]
            if self.deadline is not None and stats[i, 3] > self.deadline:
                stats[i, 4] = 0

    def finish(self) -> RoundSum | None:
        """Collective. Server: the round's sum; clients: None."""
        link = self.link
        if self.two_phase:
            stats = link.collect(self.stats)
            if self.shared and link.rt.is_server:
                self._retime_shared_uploads(stats)
            kept = link.share(self._kept(stats) if link.rt.is_server else None)
            self._reduce_kept(kept, stats)
            stats[:, 4] = 0
            for c in kept:
                stats[self.slot[c], 4] = 1
        else:
            self.sum.total()
            if self.extra_sum is not None:
                self.extra_sum.total()
            width = self.numel + self.extra_numel
            self.acc[width:] = encode_stats(self.stats, self.dtype)
            stats_of = lambda b: decode_stats(b[width:], len(self.sampled))  # noqa: E731
            link.reduce(self.acc, kind=self.kind, uploads=lambda b: self._uploads(stats_of(b)), raw=self.raw)
            stats = stats_of(self.acc)
        if not link.rt.is_server:
            return None
        per_client = {c: dict(zip(FIELDS, stats[i].tolist())) for c, i in self.slot.items()}
        for c, s in per_client.items():
            if s["flops"] > 0:
                link.charge_compute(c, int(s["flops"]))
        arrived = [c for c, s in per_client.items() if s["arrived"] > 0]
        link.charge_server("aggregate", 2 * (self.numel + self.extra_numel) * len(arrived))
        weight = sum(per_client[c]["num_samples"] for c in arrived)
        bits = sum(per_client[c]["bit"] for c in arrived)
        value = extra = None
        if arrived and weight > 0:
            value = self.value(weight)
            if self.extra_numel:
                extra = self.acc[self.numel:self.numel + self.extra_numel].div_(len(arrived))
        out = RoundSum(value, extra, per_client, arrived, weight, bits)
        if self.gathers:
            out.stack, out.weights, self.stack = self.stack, self.weights, None
        return out

    def value(self, weight: float) -> torch.Tensor:
        head = self.acc[: self.numel]
        return head.div_(weight) if self.normalize else head


class GatherAggregator(Aggregator):
    """Every arrived client's update reaches the server whole (robust aggregators:
    median, trimmed mean, Krum need each one, not a sum). The ledger charges the
    same deployment bytes as the sum; the cluster moves each update point to point
    (counted in transport_bytes). Server memory: arrived clients x update size."""
    gathers = True

    def _reduce_kept(self, kept: list[int], stats: torch.Tensor) -> None:
        link = self.link
        self.stack = self.weights = None
        if link.rt.is_server:
            rows = [link.recv_tensor(link.rt.rank_of_client(c)) for c in kept]
            if rows:
                self.stack = torch.stack(rows)
                self.weights = torch.tensor([float(stats[self.slot[c], 0]) for c in kept], dtype=torch.float64)
            link.charge_uploads(self._uploads(stats, kept), self.raw, transfer=self.transfer)
        else:
            for c in kept:
                if c in self.held:
                    link.send_tensor(self.held[c].state, 0)
        self.held.clear()

    def value(self, weight: float) -> torch.Tensor | None:
        return None
