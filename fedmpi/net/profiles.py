"""Per-client link profiles: bandwidth up/down, latency; presets, heterogeneity, traces."""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedmpi.errors import ConfigError


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
DEFAULT = LinkProfile(up_mbps=10.0, down_mbps=50.0, latency_ms=20.0)


def resolve_base(profile: str | None, up_mbps: float | None, down_mbps: float | None,
                 latency_ms: float | None) -> LinkProfile:
    """The figures a run uses: explicit values, then the preset's, then the defaults."""
    base = PRESETS[profile] if profile else DEFAULT
    return LinkProfile(base.up_mbps if up_mbps is None else up_mbps,
                       base.down_mbps if down_mbps is None else down_mbps,
                       base.latency_ms if latency_ms is None else latency_ms)


def _number(row: dict, key: str, path: Path, line: int, default: float | None = None) -> float:
    raw = row.get(key)
    if raw in (None, "") and default is not None:
        return default
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"network.trace {path} line {line}: {key} must be a number, got {raw!r}") from None
    if not math.isfinite(value):
        raise ConfigError(f"network.trace {path} line {line}: {key} must be finite, got {raw!r}")
    return value


def read_trace(path: Path, base: LinkProfile) -> dict[int, LinkProfile]:
    """client -> profile from a CSV with columns client,up_mbps,down_mbps[,latency_ms]."""
    try:
        with path.open(newline="") as fh:
            reader = csv.DictReader(fh)
            missing = {"client", "up_mbps", "down_mbps"} - set(reader.fieldnames or [])
            if missing:
                raise ConfigError(f"network.trace {path}: missing column(s) {', '.join(sorted(missing))} "
                                  "(expected client,up_mbps,down_mbps[,latency_ms])")
            rows = list(reader)
    except UnicodeDecodeError:
        raise ConfigError(f"network.trace {path} is not a text CSV file") from None
    except OSError as exc:
        raise ConfigError(f"network.trace {path}: {exc.strerror}") from None
    by_client: dict[int, LinkProfile] = {}
    for line, row in enumerate(rows, start=2):
        try:
            cid = int(row["client"])
        except (TypeError, ValueError):
            raise ConfigError(f"network.trace {path} line {line}: client must be an integer, "
                              f"got {row['client']!r}") from None
        prof = LinkProfile(_number(row, "up_mbps", path, line), _number(row, "down_mbps", path, line),
                           _number(row, "latency_ms", path, line, base.latency_ms))
        if prof.up_mbps <= 0 or prof.down_mbps <= 0:
            raise ConfigError(f"network.trace {path} line {line}: bandwidth must be > 0 (client {cid})")
        if prof.latency_ms < 0:
            raise ConfigError(f"network.trace {path} line {line}: latency_ms must be >= 0 (client {cid})")
        by_client[cid] = prof
    if not by_client:
        raise ConfigError(f"network.trace {path} has no rows")
    return by_client


def client_profiles(cfg, num_clients: int, seed: int) -> list[LinkProfile]:
    """One profile per client from a NetworkConfig, deterministic in the seed (never in the rank)."""
    base = resolve_base(cfg.profile, cfg.up_mbps, cfg.down_mbps, cfg.latency_ms)
    if cfg.trace:
        by_client = read_trace(Path(cfg.trace), base)
        # Clients beyond the trace cycle through it, so a 10-row trace serves 1000 clients.
        ordered = [by_client[k] for k in sorted(by_client)]
        return [by_client.get(c, ordered[c % len(ordered)]) for c in range(num_clients)]
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
