"""Half-precision casts: `fp16` and `bf16` (2 bytes a value, round to nearest even).

Wire layout: the header (wire.py) then n values of the half type::

    size = header_size(ndim) + 2 * n          (header_size(ndim) = 5 + 8 * ndim)

Error bounds (round to nearest, u = unit roundoff):
  fp16: |err| <= |x| * 2**-11 for |x| >= 2**-14 (normal range), <= 2**-25 below it
        (subnormals step 2**-24). Values beyond +-65504 are clamped to +-65504
        rather than sent as inf: a finite error that error feedback can carry.
  bf16: |err| <= |x| * 2**-8 (fp32's exponent range, so no clamping), <= 2**-134
        for bf16 subnormals.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from fedmpi.net.codec import CodecKey
from fedmpi.net.codecs import wire as W
from fedmpi.net.codecs.base import CHUNK, LossyCodec
from fedmpi.options import option

FP16_MAX = 65504.0


@dataclass
class FP16Options:
    name: str = option("fp16")
    error_feedback: bool = option(False, help="carry what rounding lost into the next message of the same kind")


@dataclass
class BF16Options(FP16Options):
    name: str = option("bf16")


class _HalfCast(LossyCodec):
    half: ClassVar[torch.dtype] = torch.float16
    clamp: ClassVar[float | None] = None

    def encode(self, x: torch.Tensor, key: CodecKey) -> torch.Tensor:
        head = W.pack_header(self.codec_id, x)
        flat = x.detach().reshape(-1)
        n = flat.numel()
        wire = torch.empty(len(head) + 2 * n, dtype=torch.uint8, device=x.device)
        wire[:len(head)].copy_(W.as_wire(head, x.device))
        scratch = torch.empty(min(n, CHUNK), dtype=self.half, device=x.device)
        for lo in range(0, n, CHUNK):
            hi = min(n, lo + CHUNK)
            part = flat[lo:hi]
            if self.clamp is not None:
                part = part.clamp(-self.clamp, self.clamp)
            buf = scratch[:hi - lo]
            buf.copy_(part)
            W.write(wire, len(head) + 2 * lo, buf)
        return wire

    @classmethod
    def decode_wire(cls, wire: torch.Tensor, header: W.Header) -> torch.Tensor:
        n = header.numel
        W.check_size(wire, header.size + 2 * n, cls.name)
        out = torch.empty(n, dtype=header.dtype, device=wire.device)
        for lo in range(0, n, CHUNK):
            hi = min(n, lo + CHUNK)
            out[lo:hi].copy_(W.read(wire, header.size + 2 * lo, hi - lo, cls.half))
        return out.view(header.shape)


class FP16(_HalfCast):
    """IEEE half: 10-bit mantissa, range +-65504 (clamped)."""
    name = "fp16"
    Options = FP16Options
    codec_id = W.CODEC_IDS["fp16"]
    half = torch.float16
    clamp = FP16_MAX


class BF16(_HalfCast):
    """bfloat16: fp32's range, 7-bit mantissa."""
    name = "bf16"
    Options = BF16Options
    codec_id = W.CODEC_IDS["bf16"]
    half = torch.bfloat16
