"""The header every compressed message starts with, so a receiver can decode it alone.

A deployment's receiver gets bytes and nothing else: which codec, the
original dtype and shape, and the codec's parameters (block size, k, seed)
must travel in the message. The header is charged like the payload, so small
messages pay its real cost.

Layout (little-endian, packed, no padding)::

    offset  size     field
    0       1        magic/version byte, 0xF1 (magic nibble 0xF, format version 1)
    1       1        codec id (CODEC_IDS)
    2       1        dtype code of the original tensor (DTYPE_CODES)
    3       1        flags (codec-specific bits, FLAG_*)
    4       1        ndim
    5       8*ndim   shape, one int64 per dimension
    -> header_size(ndim) = 5 + 8 * ndim bytes, then the codec's own fields.

Sections after the header are not aligned (real wire formats are not);
`read` copies a section before viewing it as a wider dtype when its offset
is not a multiple of that dtype's size.
"""
from __future__ import annotations

import importlib
import struct
from dataclasses import dataclass

import torch

MAGIC_VERSION = 0xF1

# Codec ids on the wire: append only, never renumber (old messages must still decode).
CODEC_IDS = {"fp16": 1, "bf16": 2, "int8": 3, "int4": 4, "nf4": 5, "topk": 6, "randk": 7}
# Where each id's decoder lives (for `decode_any`; imported on first use).
DECODERS = {
    1: "fedmpi.net.codecs.half:FP16", 2: "fedmpi.net.codecs.half:BF16",
    3: "fedmpi.net.codecs.integer:Int8", 4: "fedmpi.net.codecs.integer:Int4",
    5: "fedmpi.net.codecs.nf4:NF4",
    6: "fedmpi.net.codecs.sparse:TopK", 7: "fedmpi.net.codecs.sparse:RandK",
}

DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2, torch.float64: 3}
DTYPES = {code: dtype for dtype, code in DTYPE_CODES.items()}

# Flag bits (byte 3). Each codec documents the ones it uses.
FLAG_STOCHASTIC = 0x01  # rounding was stochastic (informational: decoding is the same)
FLAG_VALUES_FP16 = 0x02  # sparse values are fp16, else fp32
FLAG_BITMAP = 0x04  # sparse indices are a bitmap of ceil(n/8) bytes
FLAG_INDEX_INT64 = 0x08  # sparse indices are int64, else int32


def header_size(ndim: int) -> int:
    return 5 + 8 * ndim


@dataclass(frozen=True)
class Header:
    codec: int
    dtype: torch.dtype
    flags: int
    shape: tuple[int, ...]

    @property
    def size(self) -> int:
        return header_size(len(self.shape))

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


def pack_header(codec: int, x: torch.Tensor, flags: int = 0) -> bytes:
    if x.dtype not in DTYPE_CODES:
        raise ValueError(f"codecs carry float32/float16/bfloat16/float64 tensors, got {x.dtype}")
    if x.dim() > 255:
        raise ValueError(f"a message has at most 255 dimensions, got {x.dim()}")
    return struct.pack(f"<BBBBB{x.dim()}q", MAGIC_VERSION, codec, DTYPE_CODES[x.dtype], flags, x.dim(), *x.shape)


def parse_header(wire: torch.Tensor) -> Header:
    """The header at the start of `wire` (a 1-D uint8 tensor), checked."""
    if wire.dtype != torch.uint8 or wire.dim() != 1:
        raise ValueError(f"a wire message is a 1-D uint8 tensor, got {wire.dtype} with shape {tuple(wire.shape)}")
    if wire.numel() < 5:
        raise ValueError(f"wire message of {wire.numel()} bytes is shorter than a header")
    magic, codec, dtype, flags, ndim = struct.unpack("<BBBBB", bytes(wire[:5].tolist()))
    if magic != MAGIC_VERSION:
        raise ValueError(f"not a fedmpi codec message (magic/version byte 0x{magic:02X}, "
                         f"expected 0x{MAGIC_VERSION:02X})")
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype code {dtype} in wire header")
    size = header_size(ndim)
    if wire.numel() < size:
        raise ValueError(f"wire message of {wire.numel()} bytes is shorter than its {size}-byte header")
    shape = struct.unpack(f"<{ndim}q", bytes(wire[5:size].tolist())) if ndim else ()
    return Header(codec, DTYPES[dtype], flags, tuple(shape))


def unpack(wire: torch.Tensor, offset: int, fmt: str) -> tuple:
    """struct-unpack a few scalar fields at `offset` (codec parameters)."""
    size = struct.calcsize("<" + fmt)
    return struct.unpack("<" + fmt, bytes(wire[offset:offset + size].tolist()))


def as_wire(data: bytes, device: torch.device) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).to(device)


def read(wire: torch.Tensor, offset: int, count: int, dtype: torch.dtype) -> torch.Tensor:
    """`count` elements of `dtype` stored at byte `offset` of `wire`: a view when
    aligned, else a copy (a view must start on a multiple of the element size)."""
    width = torch.empty((), dtype=dtype).element_size()
    raw = wire[offset:offset + count * width]
    if raw.numel() != count * width:
        raise ValueError(f"wire message truncated: needs {offset + count * width} bytes, has {wire.numel()}")
    if width > 1 and offset % width:
        raw = raw.clone()
    return raw.view(dtype)


def write(wire: torch.Tensor, offset: int, values: torch.Tensor) -> int:
    """Copy `values`' bytes into `wire` at `offset`; returns the offset after them."""
    raw = values.contiguous().view(torch.uint8).reshape(-1)
    wire[offset:offset + raw.numel()].copy_(raw)
    return offset + raw.numel()


def check_size(wire: torch.Tensor, expected: int, what: str) -> None:
    if wire.numel() != expected:
        raise ValueError(f"{what} message should be {expected} bytes by its header, got {wire.numel()}")


def decode_any(wire: torch.Tensor) -> torch.Tensor:
    """Decode a message with no side information: the header names the codec."""
    header = parse_header(wire)
    if header.codec not in DECODERS:
        raise ValueError(f"unknown codec id {header.codec} in wire header")
    module, attr = DECODERS[header.codec].split(":")
    return getattr(importlib.import_module(module), attr).decode_wire(wire, header)
