"""Coordinate-wise median (Yin et al., ICML 2018): each coordinate the median of the n clients'.

Unweighted — one client, one vote — so a client cannot buy influence by
claiming a large dataset. Even n: the mean of the two middle values (the
usual median, not torch.median's lower one). Translation-equivariant, and
non-finite values sort to the ends like outliers. Working space: one sorted
column block (see robust.py).
"""
from __future__ import annotations

import torch

from fedmpi.strategies.robust import RobustAggregator, column_blocks


def sorted_block(block: torch.Tensor) -> torch.Tensor:
    """Each column sorted; NaN treated as +inf (an outlier, not a poison)."""
    return torch.sort(torch.nan_to_num(block, nan=float("inf")), dim=0).values


class Median(RobustAggregator):
    name = "median"
    weighted = False
    needs_each_update = True

    def combine(self, deltas: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        n = deltas.shape[0]
        out = torch.empty(deltas.shape[1], dtype=deltas.dtype, device=deltas.device)
        lo, hi = (n - 1) // 2, n // 2
        for cols in column_blocks(*deltas.shape, self.chunk_elements):
            s = sorted_block(deltas[:, cols])
            out[cols] = s[lo] if lo == hi else (s[lo].double() + s[hi].double()).div_(2).to(deltas.dtype)
        return out
