"""Symmetric integer quantisation with per-block absmax scales: `int8` and `int4`.

Each block (blocks.py) sends step = absmax / L, with L = 127 (int8) or 7 (int4),
and codes q = round(x / step) in [-L, L]; the receiver reads q * step.

Wire layout: blocks.py's, with codes
  int8: n signed bytes q                        size = 5 + 8*ndim + 4 + 4*ceil(n/B) + n
  int4: q + 8 (1..15) two a byte, low nibble first   size = 5 + 8*ndim + 4 + 4*ceil(n/B) + ceil(n/2)
(flag bit 0x01 marks stochastic rounding; decoding ignores it).

Error bounds, per element, with step = absmax_block / L:
  round to nearest:   |err| <= step / 2
  stochastic rounding: |err| < step, and E[decoded] = x (q = floor(x/step + u),
  u ~ U[0,1) from the CodecKey's generator: P(round up) = frac(x/step)).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from fedmpi.net.codecs import wire as W
from fedmpi.net.codecs.blocks import BlockwiseCodec
from fedmpi.options import at_least, option


@dataclass
class Int8Options:
    name: str = option("int8")
    block_size: int = option(64, check=at_least(1), help="values per absmax scale (the last block may be shorter)")
    stochastic_rounding: bool = option(False, help="round up with probability frac(x/step): unbiased, "
                                                   "randomness from (seed, round, client, kind)")
    error_feedback: bool = option(False, help="carry what quantisation lost into the next message of the same kind")


@dataclass
class Int4Options(Int8Options):
    name: str = option("int4")


class _Integer(BlockwiseCodec):
    def quantize_(self, y: torch.Tensor, out: torch.Tensor, stochastic: bool) -> None:
        if stochastic:
            y.floor_().clamp_(-self.LEVEL, self.LEVEL)
        else:
            y.round_()  # |y| <= L up to one ulp, so no clamp is needed
        if self.BITS == 4:
            y.add_(8)
        out.copy_(y)


class Int8(_Integer):
    name = "int8"
    Options = Int8Options
    codec_id = W.CODEC_IDS["int8"]
    LEVEL = 127.0
    BITS = 8


class Int4(_Integer):
    name = "int4"
    Options = Int4Options
    codec_id = W.CODEC_IDS["int4"]
    LEVEL = 7.0
    BITS = 4

    @classmethod
    def code_levels(cls, device: torch.device) -> torch.Tensor:
        return (torch.arange(16, dtype=torch.float32) - 8).to(device)
