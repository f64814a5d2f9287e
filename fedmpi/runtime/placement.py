"""Which rank computes on which device, and over which backend its tensors travel.

NCCL needs one GPU per rank: two ranks on one GPU is an error NCCL raises
mid-job. On the most common machines (one GPU and 3 ranks, 4 GPUs and 5
ranks) ranks outnumber GPUs, so the plan is computed once for the whole job
from what every rank sees (its host and the physical ids of its visible GPUs):

* every rank has a GPU of its own -> NCCL, transport on that GPU;
* otherwise -> gloo with CPU staging: compute stays on the (shared) GPU, the
  Link moves tensors through host memory (`transport` is the CPU).

Clients are spread over a host's GPUs first (least loaded, in visible order),
then the server takes the least loaded one, so with 4 GPUs and 4 ranks on a
node the server still gets a GPU of its own. The plan is pure data: it is
unit-tested with mocked device counts and multi-node layouts.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Sequence

from fedmpi.errors import ConfigError

BACKENDS = ("auto", "gloo", "nccl")
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class Seat:
    """What one rank reports before the plan: where it runs and the GPUs it sees."""
    rank: int
    host: str
    local_rank: int
    gpus: tuple[str, ...] = ()  # physical ids (UUIDs) in the rank's own cuda index order

    def to_json(self) -> dict:
        return {"rank": self.rank, "host": self.host, "local_rank": self.local_rank, "gpus": list(self.gpus)}

    @classmethod
    def from_json(cls, d: dict) -> "Seat":
        return cls(int(d["rank"]), str(d["host"]), int(d["local_rank"]), tuple(d["gpus"]))


@dataclass(frozen=True)
class Placement:
    rank: int
    host: str
    device: str  # compute: "cpu" or "cuda:<index among this rank's visible GPUs>"
    transport: str  # what the Link carries tensors on: the GPU under NCCL, else "cpu"
    gpu: str | None = None  # physical id of the compute GPU


@dataclass(frozen=True)
class Plan:
    backend: str
    placements: tuple[Placement, ...]
    reason: str

    def of(self, rank: int) -> Placement:
        return self.placements[rank]

    def describe(self) -> str:
        """The lines printed at start: the backend, why, and each host's ranks per device."""
        by_host: dict[str, dict[str, list[Placement]]] = defaultdict(lambda: defaultdict(list))
        for p in self.placements:
            by_host[p.host][p.gpu or "cpu"].append(p)
        lines = [f"fedmpi: placement: backend {self.backend} ({self.reason})"]
        for host, devices in by_host.items():
            parts = []
            for dev, places in devices.items():
                ranks = [p.rank for p in places]
                label = "cpu" if dev == "cpu" else f"{places[0].device} [{_short(dev)}]"
                parts.append(f"{label}: rank{'s' if len(ranks) > 1 else ''} {_ranges(ranks)}")
            lines.append(f"fedmpi:   {host}: " + "; ".join(parts))
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {"backend": self.backend, "reason": self.reason,
                "placements": [p.__dict__ for p in self.placements]}

    @classmethod
    def from_json(cls, data: dict) -> "Plan":
        return cls(data["backend"], tuple(Placement(**p) for p in data["placements"]), data["reason"])


def _short(gpu: str) -> str:
    return gpu if len(gpu) <= 16 else gpu[:12] + "…"


def _ranges(ranks: list[int]) -> str:
    ranks = sorted(ranks)
    out, start = [], ranks[0]
    for a, b in zip(ranks, ranks[1:] + [None]):
        if b != a + 1:
            out.append(str(start) if start == a else f"{start}-{a}")
            start = b
    return ",".join(out)


def plan(seats: Sequence[Seat], backend: str = "auto", device: str = "auto") -> Plan:
    """The job's placement; a ConfigError when the request cannot be honoured."""
    seats = sorted(seats, key=lambda s: s.rank)
    if [s.rank for s in seats] != list(range(len(seats))):
        raise ValueError(f"seats must be ranks 0..{len(seats) - 1}, got {[s.rank for s in seats]}")
    if backend not in BACKENDS:
        raise ConfigError(f"unknown runtime.backend '{backend}'; choose one of: {', '.join(BACKENDS)}")
    if device not in DEVICES:
        raise ConfigError(f"unknown runtime.device '{device}'; choose one of: {', '.join(DEVICES)}")
    blind = [s for s in seats if not s.gpus]
    if device == "cuda" and blind:
        raise ConfigError(f"runtime.device=cuda but {_who(blind)} see{'s' if len(blind) == 1 else ''} no GPU")
    if device == "cpu" or len(blind) == len(seats):
        if backend == "nccl":
            raise ConfigError("runtime.backend=nccl needs a GPU for every rank, "
                              + ("but runtime.device=cpu" if device == "cpu" else "but no rank sees a GPU")
                              + "; use runtime.backend=auto or gloo")
        why = "runtime.device=cpu" if device == "cpu" else "no GPU visible"
        return Plan("gloo", tuple(Placement(s.rank, s.host, "cpu", "cpu") for s in seats), f"CPU only: {why}")
    gpu_of = _assign(seats)
    shared = _shared(seats, gpu_of)
    if not blind and not shared and backend in ("auto", "nccl"):
        return Plan("nccl", tuple(_place(s, gpu_of[s.rank], True) for s in seats), "one GPU per rank")
    if backend == "nccl":
        if blind:
            raise ConfigError(f"runtime.backend=nccl needs a GPU for every rank, but {_who(blind)} "
                              "see no GPU; use runtime.backend=auto (gloo with CPU staging)")
        (host, gpu), ranks = next(iter(shared.items()))
        raise ConfigError(
            f"runtime.backend=nccl needs one GPU per rank, but on {host} ranks {_ranges(ranks)} would share GPU "
            f"{_short(gpu)} ({_count_summary(seats)}); NCCL refuses two ranks on one GPU: use "
            "runtime.backend=auto (gloo with CPU staging), fewer ranks per node, or more GPUs")
    if blind:
        reason = f"CPU staging: {_who(blind)} see no GPU"
    elif shared:
        reason = f"CPU staging: ranks outnumber GPUs, {_count_summary(seats)}"
    else:
        reason = "CPU staging: runtime.backend=gloo"
    return Plan("gloo", tuple(_place(s, gpu_of.get(s.rank), False) for s in seats), reason)


def _place(seat: Seat, gpu: str | None, nccl: bool) -> Placement:
    if gpu is None:
        return Placement(seat.rank, seat.host, "cpu", "cpu")
    device = f"cuda:{seat.gpus.index(gpu)}"
    return Placement(seat.rank, seat.host, device, device if nccl else "cpu", gpu)


def _assign(seats: Sequence[Seat]) -> dict[int, str]:
    """rank -> physical GPU: clients first, each on the least loaded GPU it sees
    (ties: its visible order), then the server on the least loaded one left."""
    load: Counter[tuple[str, str]] = Counter()
    out: dict[int, str] = {}
    order = [s for s in seats if s.rank != 0] + [s for s in seats if s.rank == 0]
    for s in sorted(order, key=lambda s: (s.rank == 0, s.host, s.local_rank, s.rank)):
        if not s.gpus:
            continue
        best = min(range(len(s.gpus)), key=lambda i: (load[(s.host, s.gpus[i])], i))
        out[s.rank] = s.gpus[best]
        load[(s.host, s.gpus[best])] += 1
    return out


def _shared(seats: Sequence[Seat], gpu_of: dict[int, str]) -> dict[tuple[str, str], list[int]]:
    users: dict[tuple[str, str], list[int]] = defaultdict(list)
    for s in seats:
        if s.rank in gpu_of:
            users[(s.host, gpu_of[s.rank])].append(s.rank)
    return {k: v for k, v in users.items() if len(v) > 1}


def _count_summary(seats: Sequence[Seat]) -> str:
    hosts: dict[str, list[Seat]] = defaultdict(list)
    for s in seats:
        hosts[s.host].append(s)
    parts = []
    for host, group in hosts.items():
        gpus = {g for s in group for g in s.gpus}
        parts.append(f"{host}: {len(group)} rank{'s' if len(group) != 1 else ''}, {len(gpus)} GPU"
                     f"{'s' if len(gpus) != 1 else ''}")
    return "; ".join(parts)


def _who(seats: Sequence[Seat]) -> str:
    ranks = [s.rank for s in seats]
    return f"rank{'s' if len(ranks) > 1 else ''} {_ranges(ranks)}"
