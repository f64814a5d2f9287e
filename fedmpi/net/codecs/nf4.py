"""NormalFloat4 (QLoRA, Dettmers et al. 2023): 16 levels at quantiles of a normal.

Each block (blocks.py) sends its absmax as the step; a value goes as the index
of the code book level nearest to x / absmax. The levels are QLoRA's NF4
table (information-theoretically optimal for normally distributed values,
with an exact zero), so for Gaussian-like updates it beats uniform int4 at
the same 4 bits.

Wire layout: blocks.py's, with codes the level index (0..15), two a byte, low
nibble first::

    size = 5 + 8*ndim + 4 + 4*ceil(n/B) + ceil(n/2)

Error bound: the decoded value is absmax * NF4[i] with NF4[i] the level nearest
to x / absmax (ties to the lower), so |err| <= absmax * gap / 2 with gap the
spacing of the two levels around x / absmax (at most 0.3039 / 2 * absmax,
between -1 and -0.6962).

Nearest-level search without a per-element binary search (torch.bucketize was
~0.4 s on 22.7M values here): [-1, 1] is cut into GRID equal cells, narrower
than the smallest gap between decision boundaries, so a cell holds at most one
boundary; a value's index is its cell's base index plus one if it lies above
that boundary (two table look-ups and a compare).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from fedmpi.net.codecs import wire as W
from fedmpi.net.codecs.blocks import BlockwiseCodec
from fedmpi.options import at_least, option

NF4_LEVELS = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
)
GRID = 256


def _tables() -> tuple[torch.Tensor, torch.Tensor]:
    """(base index of each cell, uint8; the boundary inside each cell or +inf, fp32)."""
    levels = torch.tensor(NF4_LEVELS, dtype=torch.float64)
    bounds = ((levels[:-1] + levels[1:]) / 2).to(torch.float32).double()  # compared in fp32, as y is
    edges = torch.linspace(-1.0, 1.0, GRID + 1, dtype=torch.float64)
    assert (bounds[1:] - bounds[:-1]).min() > 2.0 / GRID, "a grid cell would hold two boundaries"
    base = torch.zeros(GRID, dtype=torch.uint8)
    inner = torch.full((GRID,), float("inf"), dtype=torch.float32)
    for cell in range(GRID):
        left, right = edges[cell], edges[cell + 1]
        base[cell] = int((bounds < left).sum())
        inside = bounds[(bounds >= left) & (bounds < right)]
        if inside.numel():
            inner[cell] = float(inside[0])
    return base, inner


_BASE, _INNER = _tables()


@dataclass
class NF4Options:
    name: str = option("nf4")
    block_size: int = option(64, check=at_least(1), help="values per absmax scale (the last block may be shorter)")
    error_feedback: bool = option(False, help="carry what quantisation lost into the next message of the same kind")


class NF4(BlockwiseCodec):
    name = "nf4"
    Options = NF4Options
    codec_id = W.CODEC_IDS["nf4"]
    LEVEL = 1.0
    BITS = 4

    def quantize_(self, y: torch.Tensor, out: torch.Tensor, stochastic: bool) -> None:
        flat = y.view(-1)
        base, inner = _BASE.to(y.device), _INNER.to(y.device)
        cell = ((flat + 1.0) * (GRID / 2)).to(torch.int64).clamp_(0, GRID - 1)  # y + 1 >= 0: truncation = floor
        codes = base.index_select(0, cell)
        codes.add_(torch.gt(flat, inner.index_select(0, cell)))
        out.copy_(codes.view(out.shape))

    @classmethod
    def code_levels(cls, device: torch.device) -> torch.Tensor:
        return torch.tensor(NF4_LEVELS, dtype=torch.float32, device=device)
