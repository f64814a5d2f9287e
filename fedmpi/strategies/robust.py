"""The aggregator seam: the round's arrived client updates -> one aggregated delta.

An aggregator sees every arrived client's update as a delta w.r.t. the
global model, stacked as a float32 tensor `deltas` (n × d), with their
weights (n; the engine's dataset sizes), and returns the aggregated delta
(d); the engine passes `global + delta` to the server strategy as its mean.

Deltas, not states: the median, the trimmed mean and Krum are translation-
equivariant (aggregating states gives global + the same result, up to
rounding), but norm clipping is not — a norm is only meaningful relative to
the model the client started from — and float32 deltas keep digits that
float32 states near a large global model lose.

Memory: the server holds the n × d stack (4·n·d bytes: 10 clients of a
22M-parameter model are 0.9 GB) plus working space bounded by `chunk`:
column blocks of at most `chunk_elements` are sorted (12 bytes an element:
values + int64 indices) or multiplied at a time. Only `mean` (the default)
needs no stack: the engine's one-collective weighted sum serves it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Iterator

import torch

from fedmpi.errors import ConfigError
from fedmpi.options import option

CHUNK_ELEMENTS = 1 << 24  # n × columns per working block (64 MB of float32)


@dataclass
class AggregatorOptions:
    """`strategy.aggregator`: every aggregator's options start with its name."""
    name: str = option("mean", help="how the arrived updates are combined (see AGGREGATORS)")


def column_blocks(n: int, d: int, chunk_elements: int = CHUNK_ELEMENTS) -> Iterator[slice]:
    """Column slices of an n × d stack, each at most `chunk_elements` (≥ 1 column)."""
    width = max(1, chunk_elements // max(1, n))
    for start in range(0, d, width):
        yield slice(start, min(d, start + width))


def normalized(weights: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    w = weights.to(like.device, torch.float64)
    total = w.sum()
    if not total > 0:
        raise ValueError("aggregation weights must sum to > 0")
    return w / total


class RobustAggregator:
    """The base of the aggregators, and itself `mean`: the weighted mean, which the
    engine's one-collective sum computes without stacking (named apart from
    engine/aggregate.Aggregator, the collective itself)."""
    name: ClassVar[str] = "mean"
    Options: ClassVar[type] = AggregatorOptions
    weighted: ClassVar[bool] = True  # whether the client weights enter the result
    needs_each_update: ClassVar[bool] = False  # False: a weighted sum (one collective) is enough
    key: ClassVar[str] = "strategy.aggregator"

    def __init__(self, options: Any = None, chunk_elements: int = CHUNK_ELEMENTS) -> None:
        self.options = options if options is not None else self.Options()
        self.chunk_elements = chunk_elements

    # -- refusals -------------------------------------------------------------
    def min_clients(self) -> int:
        """The fewest arrived updates this aggregator can serve."""
        return 1

    @classmethod
    def check(cls, cfg: Any) -> None:
        """Config time: refuse options that clients_per_round cannot serve."""
        opts = cfg.strategy.aggregator
        need = cls(opts).min_clients()
        k = cfg.federation.clients_per_round
        if k < need:
            raise ConfigError(f"{cls.key}.name {cls.name} {cls(opts).requirement()} but "
                              f"federation.clients_per_round is {k}")

    def requirement(self) -> str:
        return f"needs at least {self.min_clients()} clients per round"

    def require(self, n: int, rnd: int | None = None) -> None:
        """Run time: refuse a round whose arrived count is too small, naming the keys."""
        if n < self.min_clients():
            when = f" in round {rnd}" if rnd is not None else ""
            raise ConfigError(f"{self.key}.name {self.name} {self.requirement()}; only {n} arrived{when} "
                              f"(federation.dropout / deadline_s removed the others)")

    # -- the aggregate ----------------------------------------------------------
    def aggregate(self, deltas: torch.Tensor, weights: torch.Tensor, rnd: int | None = None) -> torch.Tensor:
        """deltas: n × d (float32), weights: n  ->  the aggregated delta (d)."""
        if deltas.dim() != 2 or weights.numel() != deltas.shape[0]:
            raise ValueError(f"expected deltas n × d and n weights, got {tuple(deltas.shape)} and "
                             f"{tuple(weights.shape)}")
        self.require(deltas.shape[0], rnd)
        return self.combine(deltas, weights)

    def combine(self, deltas: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        w = normalized(weights, deltas)
        out = torch.empty(deltas.shape[1], dtype=deltas.dtype, device=deltas.device)
        for cols in column_blocks(*deltas.shape, self.chunk_elements):
            out[cols] = (w @ deltas[:, cols].to(torch.float64)).to(deltas.dtype)
        return out
