"""The Ledger: one row per emulated message or unit of local work.

Only the server writes it; client ranks ship their FLOP counts to the server
with their update. Bytes are what a deployment would send in a star topology;
what the cluster's collectives really moved is tallied separately.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

from fedmpi.jsonsafe import dumps

UP, DOWN, LOCAL, SERVER = "up", "down", "local", "server"


@dataclass
class LedgerRow:
    round: int
    client: int  # -1 for the server's own work
    direction: str  # up | down | local (client compute) | server (server compute)
    kind: str  # model, update, activations, gradients, prompt, stats, init, compute, ...
    bytes: int = 0
    flops: int = 0
    seconds: float = 0.0
    raw_bytes: int | None = None  # the message before its codec (fp32 size), when the codec changed it

    def to_json(self) -> dict:
        out = asdict(self)
        if out["raw_bytes"] is None:  # rows of uncompressed messages keep their old shape
            del out["raw_bytes"]
        return out


@dataclass
class RoundTotals:
    round: int
    bytes_up: int = 0
    bytes_down: int = 0
    client_flops: int = 0
    server_flops: int = 0
    transport_bytes: int = 0
    emulated_seconds: float = 0.0
    bytes_by_kind: dict[str, int] = field(default_factory=dict)


class Ledger:
    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._fh = path.open("a") if path is not None else None
        self._rows: list[LedgerRow] = []
        self._transport = 0
        self.totals: list[RoundTotals] = []

    def record(self, row: LedgerRow) -> None:
        self._rows.append(row)

    def add(self, round: int, client: int, direction: str, kind: str, *, bytes: int = 0,
            flops: int = 0, seconds: float = 0.0, raw_bytes: int | None = None) -> LedgerRow:
        raw = None if raw_bytes is None or int(raw_bytes) == int(bytes) else int(raw_bytes)
        row = LedgerRow(round, client, direction, kind, int(bytes), int(flops), float(seconds), raw)
        self.record(row)
        return row

    def add_transport(self, nbytes: int) -> None:
        """Bytes the cluster's own transport moved (not emulated traffic)."""
        self._transport += int(nbytes)

    @property
    def pending(self) -> list[LedgerRow]:
        return list(self._rows)

    def close_round(self, round: int, excluded: set[int] | None = None) -> RoundTotals:
        """Sum the round's rows, write them out, and compute the emulated time.

        Round time in synchronous FL: the slowest client's download + compute +
        upload, plus the server's own compute. Clients in ``excluded`` (dropped,
        stragglers cut at a deadline) do not hold the round up.
        """
        totals = RoundTotals(round=round, transport_bytes=self._transport)
        per_client: dict[int, float] = defaultdict(float)
        server_seconds = 0.0
        kinds: dict[str, int] = defaultdict(int)
        for row in self._rows:
            if row.direction == UP:
                totals.bytes_up += row.bytes
            elif row.direction == DOWN:
                totals.bytes_down += row.bytes
            if row.direction == SERVER:
                totals.server_flops += row.flops
                server_seconds += row.seconds
            else:
                totals.client_flops += row.flops
                per_client[row.client] += row.seconds
            if row.bytes:
                kinds[row.kind] += row.bytes
        live = [s for c, s in per_client.items() if not excluded or c not in excluded]
        totals.emulated_seconds = (max(live) if live else 0.0) + server_seconds
        totals.bytes_by_kind = dict(kinds)
        if self._fh is not None:
            for row in self._rows:
                self._fh.write(dumps(row.to_json()) + "\n")
            self._fh.flush()
        self.totals.append(totals)
        self._rows.clear()
        self._transport = 0
        return totals

    def client_seconds(self) -> dict[int, float]:
        """Emulated seconds per client so far this round (for deadlines)."""
        out: dict[int, float] = defaultdict(float)
        for row in self._rows:
            if row.direction != SERVER:
                out[row.client] += row.seconds
        return dict(out)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
