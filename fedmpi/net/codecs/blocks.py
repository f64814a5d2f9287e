"""Blockwise absmax quantisation, shared by `int8`, `int4` and `nf4`.

The flattened tensor is cut into blocks of `block_size` values (the last one
may be shorter); each block is scaled by its own absolute maximum, so one
outlier only coarsens its own block. A block's scale travels as fp32:
fine-tuning updates are small (1e-8..1e-3), where fp16 scales would be
subnormal (below 6.1e-5 fp16 keeps fewer than 10 mantissa bits, below 6e-8
nothing) and break the error bound; fp32 costs 4 / block_size bytes a value
(0.5 bit at the default 64; raise block_size to pay less).

Common wire layout (wire.py header, then)::

    u32        block size B actually used (min(block_size, n), at least 1)
    fp32 x nb  per-block step, nb = ceil(n / B)
    codes      n int8 (int8) or ceil(n / 2) bytes of two 4-bit codes (int4, nf4):
               element 2i in the low nibble, 2i+1 in the high nibble; an odd
               n leaves the last high nibble 0

    size = (5 + 8 * ndim) + 4 + 4 * ceil(n / block_size) + code_bytes

A block whose absmax is below 1e-35 (zero, or flushed denormals) gets step 0
and decodes to zeros. Inputs must be finite.

The kernels run over chunks of ~CHUNK values with reused scratch buffers:
fresh full-size temporaries cost more in page faults than the arithmetic.
"""
from __future__ import annotations

import struct
from typing import ClassVar, Iterator

import torch

from fedmpi.net.codec import CodecKey
from fedmpi.net.codecs import wire as W
from fedmpi.net.codecs.base import CHUNK, LossyCodec, keyed_generator

TINY = 1e-35  # absmax at or below this: the block is sent as zeros (L / absmax would overflow fp32)


def num_blocks(n: int, block: int) -> int:
    return -(-n // block)


def block_chunks(n: int, block: int) -> Iterator[tuple[int, int, int, int, int, int]]:
    """(first block, end block, first element, end element, rows, width) of each chunk:
    whole blocks first, CHUNK values at a time, then the partial last block alone."""
    full = n // block
    step = max(1, CHUNK // block)
    for i in range(0, full, step):
        j = min(full, i + step)
        yield i, j, i * block, j * block, j - i, block
    if n % block:
        yield full, full + 1, full * block, n, 1, n - full * block


def block_absmax(flat: torch.Tensor, block: int) -> torch.Tensor:
    """max |x| of each block, fp32."""
    n = flat.numel()
    out = torch.empty(num_blocks(n, block), dtype=torch.float32, device=flat.device)
    for b0, b1, e0, e1, rows, width in block_chunks(n, block):
        lo, hi = torch.aminmax(flat[e0:e1].view(rows, width), dim=1)
        out[b0:b1].copy_(torch.maximum(hi, lo.neg()))
    return out


def nibble_table(levels: torch.Tensor) -> torch.Tensor:
    """(256, 2) fp32: the levels of a byte's low and high 4-bit codes."""
    b = torch.arange(256)
    return torch.stack([levels[b & 15], levels[b >> 4]], dim=1).to(torch.float32)


def pack_nibbles(codes: torch.Tensor, out: torch.Tensor) -> None:
    """Two 4-bit codes (uint8 values < 16) a byte into `out` (ceil(n/2) bytes)."""
    n = codes.numel()
    even = n // 2
    torch.bitwise_or(codes[0:2 * even:2], codes[1:2 * even:2] << 4, out=out[:even])
    if n % 2:
        out[even:even + 1].copy_(codes[n - 1:n])


class BlockwiseCodec(LossyCodec):
    """Per-block step = absmax / LEVEL; subclasses turn y = x / step into codes and back."""
    LEVEL: ClassVar[float] = 127.0  # the largest |code value|; y = x / step lies in [-LEVEL, LEVEL]
    BITS: ClassVar[int] = 8

    @property
    def stochastic(self) -> bool:
        return bool(getattr(self.options, "stochastic_rounding", False))

    @classmethod
    def code_bytes(cls, n: int) -> int:
        return n if cls.BITS == 8 else (n + 1) // 2

    @classmethod
    def wire_size(cls, shape: tuple[int, ...], block_size: int) -> int:
        """The documented size formula (tests compare encode's length with it)."""
        n = 1
        for d in shape:
            n *= d
        return W.header_size(len(shape)) + 4 + 4 * num_blocks(n, block_size) + cls.code_bytes(n)

    def encode(self, x: torch.Tensor, key: CodecKey) -> torch.Tensor:
        return self._encode(x, key, None)

    def encode_decoded(self, x: torch.Tensor, key: CodecKey) -> tuple[torch.Tensor, torch.Tensor]:
        """(wire, decode(wire)) in one pass: each chunk's values are rebuilt from its
        codes while they are in cache, by decode's own arithmetic (code level x step),
        so they equal decode's bit for bit (tests check) at a pass less over the model."""
        decoded = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        return self._encode(x, key, decoded.view(-1)), decoded

    def _encode(self, x: torch.Tensor, key: CodecKey, decoded: torch.Tensor | None) -> torch.Tensor:
        flat = x.detach().reshape(-1)
        n = flat.numel()
        block = max(1, min(int(self.options.block_size), n))
        if block > 0xFFFFFFFF:
            raise ValueError(f"{self.name}: block size {block} does not fit the wire's u32 field")
        nb = num_blocks(n, block)
        head = W.pack_header(self.codec_id, x, W.FLAG_STOCHASTIC if self.stochastic else 0) + struct.pack("<I", block)
        steps_at = len(head)
        codes_at = steps_at + 4 * nb
        wire = torch.empty(codes_at + self.code_bytes(n), dtype=torch.uint8, device=x.device)
        wire[:steps_at].copy_(W.as_wire(head, x.device))

        absmax = block_absmax(flat, block)
        live = absmax > TINY
        step = torch.where(live, absmax / self.LEVEL, torch.zeros_like(absmax))
        inv = torch.where(live, self.LEVEL / absmax.clamp(min=TINY), torch.zeros_like(absmax))
        W.write(wire, steps_at, step)

        codes = wire[codes_at:].view(torch.int8) if self.BITS == 8 else \
            torch.empty(n, dtype=torch.uint8, device=x.device)
        gen = keyed_generator(key, self.name) if self.stochastic else None
        levels = self.code_levels(x.device) if decoded is not None and self.BITS == 4 else None
        scratch = torch.empty(min(n, max(CHUNK, block)), dtype=torch.float32, device=x.device)
        noise = torch.empty(scratch.numel(), dtype=torch.float32) if gen is not None else None
        for b0, b1, e0, e1, rows, width in block_chunks(n, block):
            y = scratch[:e1 - e0].view(rows, width)
            torch.mul(flat[e0:e1].view(rows, width), inv[b0:b1, None], out=y)
            if gen is not None:
                u = torch.rand(e1 - e0, generator=gen, out=noise[:e1 - e0])
                y.add_(u.view(rows, width).to(y.device))
            chunk_codes = codes[e0:e1].view(rows, width)
            self.quantize_(y, chunk_codes, stochastic=gen is not None)
            if decoded is not None:
                values = chunk_codes if levels is None else levels.index_select(0, chunk_codes.reshape(-1).long())
                torch.mul(values.view(rows, width), step[b0:b1, None], out=decoded[e0:e1].view(rows, width))
        if self.BITS == 4:
            pack_nibbles(codes, wire[codes_at:])
        return wire

    def quantize_(self, y: torch.Tensor, out: torch.Tensor, stochastic: bool) -> None:
        """Write the codes of y (x / step, plus U[0,1) noise when stochastic) into `out`; may clobber y."""
        raise NotImplementedError

    @classmethod
    def decode_wire(cls, wire: torch.Tensor, header: W.Header) -> torch.Tensor:
        n = header.numel
        (block,) = W.unpack(wire, header.size, "I")
        if block < 1:
            raise ValueError(f"{cls.name} message has block size {block}")
        nb = num_blocks(n, block)
        steps_at = header.size + 4
        codes_at = steps_at + 4 * nb
        W.check_size(wire, codes_at + cls.code_bytes(n), cls.name)
        step = W.read(wire, steps_at, nb, torch.float32)
        out = torch.empty(n, dtype=header.dtype, device=wire.device)
        table = cls.byte_levels(wire.device) if cls.BITS == 4 else None
        for b0, b1, e0, e1, rows, width in block_chunks(n, block):
            if table is None:
                values = wire[codes_at + e0:codes_at + e1].view(torch.int8)
            else:
                first = e0 // 2  # the byte holding element e0
                packed = wire[codes_at + first:codes_at + (e1 + 1) // 2]
                values = table.index_select(0, packed.long()).view(-1)[e0 - 2 * first:e1 - 2 * first]
            torch.mul(values.view(rows, width), step[b0:b1, None], out=out[e0:e1].view(rows, width))
        return out.view(header.shape)

    @classmethod
    def byte_levels(cls, device: torch.device) -> torch.Tensor:
        """4-bit codecs: nibble_table of their code levels (in units of step)."""
        return nibble_table(cls.code_levels(device)).to(device)

    @classmethod
    def code_levels(cls, device: torch.device) -> torch.Tensor:
        """4-bit codecs: the 16 code values (in units of step), fp32."""
        raise NotImplementedError
