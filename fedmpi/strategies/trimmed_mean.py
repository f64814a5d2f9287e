"""Coordinate-wise trimmed mean (Yin et al., ICML 2018).

Per coordinate, drop the k = ⌊β·n⌋ largest and k smallest of the n values
and average the n − 2k left (β in [0, 0.5), so at least one is left; β = 0
is the unweighted mean). Unweighted, like the median; translation-
equivariant. Working space: one sorted column block (see robust.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fedmpi.options import in_range, option
from fedmpi.strategies.median import sorted_block
from fedmpi.strategies.robust import RobustAggregator, AggregatorOptions, column_blocks


@dataclass
class TrimmedMeanOptions(AggregatorOptions):
    name: str = option("trimmed_mean")
    beta: float = option(0.1, check=in_range(0, 0.5, high_open=True),
                         help="fraction trimmed from each end, per coordinate")


class TrimmedMean(RobustAggregator):
    name = "trimmed_mean"
    Options = TrimmedMeanOptions
    weighted = False
    needs_each_update = True

    def trimmed(self, n: int) -> int:
        return math.floor(self.options.beta * n)

    def combine(self, deltas: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        n = deltas.shape[0]
        k = self.trimmed(n)
        out = torch.empty(deltas.shape[1], dtype=deltas.dtype, device=deltas.device)
        for cols in column_blocks(*deltas.shape, self.chunk_elements):
            s = sorted_block(deltas[:, cols]) if k else deltas[:, cols]
            out[cols] = s[k:n - k].to(torch.float64).mean(0).to(deltas.dtype)
        return out
