"""Per-client link profiles: bandwidth up/down, latency; presets and heterogeneity."""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedmpi.config import ConfigError, NetworkConfig


@dataclass(frozen=True)
class LinkProfile:
    up_mbps: float
    down_mbps: float
    latency_ms: float

    def seconds(self, nbytes: int, direction: str) -> float:
        """Emulated transfer time: latency + bytes * 8 / bandwidth."""
        mbps = self.up_mbps if direction == "up" else self.down_mbps
        return transfer_seconds(nbytes, mbps, self.latency_ms)


def transfer_seconds(nbytes: int, mbps: float, latency_ms: float) -> float:
    return latency_ms / 1e3 + nbytes * 8.0 / (mbps * 1e6)


# Typical figures: a constrained 4G/LTE phone, home Wi-Fi, a datacenter NIC.
PRESETS: dict[str, LinkProfile] = {
    "mobile": LinkProfile(up_mbps=5.0, down_mbps=20.0, latency_ms=50.0),
    "wifi": LinkProfile(up_mbps=50.0, down_mbps=100.0, latency_ms=10.0),
    "datacenter": LinkProfile(up_mbps=10_000.0, down_mbps=10_000.0, latency_ms=0.1),
}


def _read_trace(path: Path, num_clients: int, base: LinkProfile) -> list[LinkProfile]:
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    by_client: dict[int, LinkProfile] = {}
    for row in rows:
        try:
            cid = int(row["client"])
            prof = LinkProfile(
                float(row["up_mbps"]),
                float(row["down_mbps"]),
                float(row.get("latency_ms") or base.latency_ms),
            )
        except (KeyError, ValueError) as exc:
            raise ConfigError(f"network.trace {path}: bad row {row} ({exc})") from None
        if prof.up_mbps <= 0 or prof.down_mbps <= 0:
            raise ConfigError(f"network.trace {path}: bandwidth must be > 0 (client {cid})")
        by_client[cid] = prof
    # Clients beyond the trace cycle through it, so a 10-row trace serves 1000 clients.
    ordered = [by_client[k] for k in sorted(by_client)]
    if not ordered:
        raise ConfigError(f"network.trace {path} has no rows")
    return [by_client.get(c, ordered[c % len(ordered)]) for c in range(num_clients)]


def client_profiles(cfg: NetworkConfig, num_clients: int, seed: int) -> list[LinkProfile]:
    """One profile per client, deterministic in the seed (never in the rank)."""
    base = PRESETS[cfg.profile] if cfg.profile else LinkProfile(cfg.up_mbps, cfg.down_mbps, cfg.latency_ms)
    if cfg.trace:
        return _read_trace(Path(cfg.trace), num_clients, base)
    if cfg.heterogeneity <= 0:
        return [base] * num_clients
    rng = np.random.default_rng([seed, 0x11E7])
    # Mean-one lognormal factor: heterogeneous clients keep the preset's average.
    sigma = cfg.heterogeneity
    factors = rng.lognormal(mean=-0.5 * sigma**2, sigma=sigma, size=num_clients)
    return [LinkProfile(base.up_mbps * f, base.down_mbps * f, base.latency_ms) for f in factors]


def client_speeds(gflops: float, heterogeneity: float, num_clients: int, seed: int) -> list[float]:
    """Emulated client device speed in FLOP/s."""
    if heterogeneity <= 0:
        return [gflops * 1e9] * num_clients
    rng = np.random.default_rng([seed, 0xC0DE])
    sigma = heterogeneity
    factors = rng.lognormal(mean=-0.5 * sigma**2, sigma=sigma, size=num_clients)
    return [gflops * 1e9 * f for f in factors]
