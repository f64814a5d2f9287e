"""One round's server-side arithmetic in one process: the order the engine must keep.

    clip (DP) -> encode/decode (+ error feedback) -> bound (DP) -> aggregate -> noise (DP) -> server optimiser

`server_round` is the reference the engine's distributed version must equal
(tests compare against it): in the engine, steps 1-3 run on each client's
rank (the upload codec already returns what the server decodes), the sum of
step 4 is the one collective for `mean`, `norm_clip` and DP (each rank folds
its clients' clipped deltas), and only the order-statistics aggregators
(median, trimmed mean, Krum) need every update on the server (n × d).
"""
from __future__ import annotations

from typing import Callable

import torch

from fedmpi.net.flat import flatten
from fedmpi.strategies.base import ServerStrategy
from fedmpi.strategies.dp import DPFedAvg
from fedmpi.strategies.robust import RobustAggregator

Transmit = Callable[[int, torch.Tensor], torch.Tensor]  # (client, delta) -> what the server decodes


def server_round(params: list[torch.Tensor], states: dict[int, torch.Tensor], weights: dict[int, float], rnd: int,
                 server: ServerStrategy, aggregator: RobustAggregator | None = None,
                 privacy: DPFedAvg | None = None, transmit: Transmit | None = None) -> torch.Tensor:
    """Apply one round to `params` from the arrived clients' trained states; returns the
    aggregated delta the server strategy was given (as global + delta)."""
    glob = flatten(params)
    aggregator = aggregator or RobustAggregator()
    clients = sorted(states)
    deltas, unclipped = [], 0.0
    for c in clients:
        delta = states[c].to(glob.dtype) - glob  # 1. the client's delta
        if privacy is not None:
            delta, bit = privacy.privatize(delta, c, rnd)  # clip (+ local noise)
            unclipped += bit
        if transmit is not None:
            delta = transmit(c, delta)  # 2. codec round trip (error feedback lives in the codec's state)
        if privacy is not None:
            delta = privacy.bound(delta)  # 3. sensitivity survives a lossy codec
        deltas.append(delta)
    if privacy is not None:  # 4-5. uniform weights, fixed denominator, noise (even if nobody arrived)
        total = torch.stack(deltas).sum(0) if deltas else torch.zeros_like(glob)
        agg = privacy.release(total, unclipped, rnd)
    else:
        if not deltas:
            return torch.zeros_like(glob)  # nothing arrived: the global state stays
        agg = aggregator.aggregate(torch.stack(deltas), torch.tensor([float(weights[c]) for c in clients]), rnd)
    server.apply(params, glob + agg, rnd)  # 6.
    return agg
