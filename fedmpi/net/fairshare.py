"""The server's own link, shared by the clients transferring at once.

In a star every download leaves through the server's downlink and every upload
lands on its uplink. With a finite server capacity S (network.server_down_mbps,
network.server_up_mbps), the transfers in flight share it max-min fairly (a
fluid model): each gets min(its own link, an equal share of what the slower
ones leave), and the shares are recomputed whenever a transfer starts or
ends. Downloads all start when the round starts; an upload starts when its
client has finished everything before it. Latency is added per message, as
on an unshared link. With S unlimited (the default) nothing changes.
"""
from __future__ import annotations

import math


def water_fill(caps: list[float], capacity: float) -> list[float]:
    """Max-min fair rates for flows with these caps sharing `capacity`."""
    order = sorted(range(len(caps)), key=lambda i: caps[i])
    rates = [0.0] * len(caps)
    left, n = capacity, len(caps)
    for k, i in enumerate(order):
        share = left / (n - k)
        rates[i] = min(caps[i], share)
        left -= rates[i]
    return rates


def finish_times(starts: list[float], bits: list[float], caps: list[float], capacity: float) -> list[float]:
    """When each transfer ends: `bits` to move from `starts[i]` at most `caps[i]` bit/s,
    all sharing `capacity` bit/s (math.inf: each runs at its own cap)."""
    n = len(starts)
    if math.isinf(capacity):
        return [s + (b / c if b else 0.0) for s, b, c in zip(starts, bits, caps)]
    remaining = list(map(float, bits))
    done = [starts[i] if remaining[i] <= 0 else math.nan for i in range(n)]
    pending = sorted((starts[i], i) for i in range(n) if remaining[i] > 0)
    active: list[int] = []
    t = pending[0][0] if pending else 0.0
    while pending or active:
        while pending and pending[0][0] <= t:
            active.append(pending.pop(0)[1])
        if not active:
            t = pending[0][0]
            continue
        rates = water_fill([caps[i] for i in active], capacity)
        dt = min(remaining[i] / r for i, r in zip(active, rates))
        if pending:
            dt = min(dt, pending[0][0] - t)
        t += dt
        still = []
        for i, r in zip(active, rates):
            remaining[i] -= r * dt
            if remaining[i] <= 1e-9 * max(1.0, bits[i]):
                done[i] = t
            else:
                still.append(i)
        active = still
    return done
