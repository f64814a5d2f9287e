"""Sparsification: `topk` (the k largest magnitudes) and `randk` (k random coordinates).

Both keep k coordinates, k = `k`, or round(`fraction` * n) (at least 1, at
most n); with neither set, fraction = 0.01. Kept values are exact (fp32) or
fp16 (`values: fp16`, clamped to +-65504); every other coordinate decodes to 0.

topk wire layout (wire.py header, then)::

    u64        k
    indices    the kept coordinates, ascending, as the cheaper of
               - a list: k x int32 (n < 2**31) or k x int64 (flag 0x08)
               - a bitmap (flag 0x04): ceil(n / 8) bytes, element i is bit i % 8
                 (least significant first) of byte i // 8
    values     k x fp32, or k x fp16 (flag 0x02), in index order

    size = (5 + 8*ndim) + 8 + min(k * index_width, ceil(n / 8)) + k * value_width
    (the bitmap only when strictly smaller)

randk sends no indices: sender and receiver draw the same k coordinates from a
seed, so a real deployment ships the seed (8 bytes) and the values::

    u64        k
    u64        seed of the coordinate sampler (from the CodecKey)
    values     k x fp32 / fp16 (flag 0x02), in ascending coordinate order

    size = (5 + 8*ndim) + 8 + 8 + k * value_width

The coordinates are a uniform k-subset of range(n): a CPU torch.Generator seeded
with `seed` draws with replacement until k distinct ones exist, then keeps a
uniform k of them (a uniform k-subset by symmetry; O(k log k), where
randperm(n) would cost ~1 s on 22.7M values); k > n / 2 samples the n - k
coordinates to drop instead. `rescale: true` multiplies the kept values by
n / k so that E[decoded] = x (unbiased); off by default, as the unscaled,
contractive message is the one error feedback wants.
"""
from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import torch

from fedmpi.errors import ConfigError
from fedmpi.net.codec import CodecKey
from fedmpi.net.codecs import wire as W
from fedmpi.net.codecs.base import CHUNK, LossyCodec, key_seed
from fedmpi.net.codecs.half import FP16_MAX
from fedmpi.options import at_least, in_range, option

DEFAULT_FRACTION = 0.01
VALUE_DTYPES = {"fp32": torch.float32, "fp16": torch.float16}


@dataclass
class TopKOptions:
    name: str = option("topk")
    fraction: float | None = option(None, check=in_range(0, 1, low_open=True),
                                    help=f"share of coordinates kept (default {DEFAULT_FRACTION} when k is not set)")
    k: int | None = option(None, check=at_least(1), help="number of coordinates kept (instead of fraction)")
    values: str = option("fp32", choices=tuple(VALUE_DTYPES), help="width of the kept values on the wire")
    error_feedback: bool = option(False, help="carry the coordinates not sent into the next message of the same kind")

    def validate_at(self, prefix: str) -> None:
        """Checks across keys, naming them with the section's dotted `prefix`."""
        if self.fraction is not None and self.k is not None:
            raise ConfigError(f"{prefix}fraction and {prefix}k are exclusive: set one of them")

    def count(self, n: int) -> int:
        """k for a message of n values."""
        if n == 0:
            return 0
        if self.k is not None:
            return min(int(self.k), n)
        fraction = DEFAULT_FRACTION if self.fraction is None else float(self.fraction)
        return min(n, max(1, math.floor(fraction * n + 0.5)))


@dataclass
class RandKOptions(TopKOptions):
    name: str = option("randk")
    rescale: bool = option(False, help="scale kept values by n/k so the message is unbiased (E[decoded] = x)")


def index_width(n: int) -> int:
    return 4 if n < 2 ** 31 else 8


def uses_bitmap(n: int, k: int) -> bool:
    return -(-n // 8) < k * index_width(n)


def top_indices(flat: torch.Tensor, k: int) -> torch.Tensor:
    """Ascending int64 positions of the k largest |flat| (exact; ties broken by torch.topk).

    torch.topk over 22.7M values takes ~0.5 s here; instead a threshold a little
    below the k-th magnitude is read off a strided sample, the few candidates
    above it are gathered chunk by chunk, and topk runs on those. If the sample
    misjudged (fewer than k candidates) the full topk runs."""
    n = flat.numel()
    if k >= n:
        return torch.arange(n, device=flat.device)
    if n <= 1 << 16 or 8 * k >= n:
        return torch.topk(flat.abs(), k, sorted=False).indices.sort().values
    stride = n >> 16
    sample = flat[::stride].abs()
    expect = k * sample.numel() / n
    rank = min(sample.numel(), int(1.25 * expect + 4 * math.sqrt(expect) + 16))
    threshold = torch.topk(sample, rank, sorted=False).values.min()
    found = [torch.nonzero(flat[lo:lo + CHUNK].abs() >= threshold).view(-1).add_(lo) for lo in range(0, n, CHUNK)]
    cand = torch.cat(found)
    if cand.numel() < k:
        return torch.topk(flat.abs(), k, sorted=False).indices.sort().values
    return cand[torch.topk(flat[cand].abs(), k, sorted=False).indices].sort().values


def sample_indices(n: int, k: int, seed: int) -> torch.Tensor:
    """A uniform k-subset of range(n), ascending int64 on the CPU; a function of (n, k, seed) only."""
    g = torch.Generator(device="cpu")
    g.manual_seed(seed)
    return _sample(n, k, g)


def _sample(n: int, k: int, g: torch.Generator) -> torch.Tensor:
    if k == 0:
        return torch.empty(0, dtype=torch.int64)
    if 2 * k > n:
        keep = torch.ones(n, dtype=torch.bool)
        keep[_sample(n, n - k, g)] = False
        return torch.nonzero(keep).view(-1)
    draws = k + k // 4 + 32
    pool = torch.empty(0, dtype=torch.int64)
    while True:
        pool = torch.cat([pool, torch.randint(0, n, (draws,), generator=g)])
        distinct = torch.unique(pool)
        if distinct.numel() >= k:
            break
        draws *= 2
    return distinct[torch.randperm(distinct.numel(), generator=g)[:k]].sort().values


def _values(flat: torch.Tensor, idx: torch.Tensor, dtype: torch.dtype, scale: float = 1.0) -> torch.Tensor:
    v = flat[idx]
    if scale != 1.0:
        v = v * scale
    if dtype == torch.float16:
        v = v.clamp(-FP16_MAX, FP16_MAX)
    return v.to(dtype)


def _value_dtype(flags: int) -> torch.dtype:
    return torch.float16 if flags & W.FLAG_VALUES_FP16 else torch.float32


def _scatter(header: W.Header, idx: torch.Tensor, values: torch.Tensor, device: torch.device) -> torch.Tensor:
    n = header.numel
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n):
        raise ValueError(f"sparse message has coordinates outside [0, {n})")
    out = torch.zeros(n, dtype=header.dtype, device=device)
    out[idx.to(device)] = values.to(header.dtype)
    return out.view(header.shape)


class _Sparse(LossyCodec):
    def __init__(self, options=None) -> None:
        super().__init__(options)
        self.options.validate_at("")

    @property
    def value_dtype(self) -> torch.dtype:
        return VALUE_DTYPES[self.options.values]

    def _flags(self) -> int:
        return W.FLAG_VALUES_FP16 if self.value_dtype == torch.float16 else 0


class TopK(_Sparse):
    name = "topk"
    Options = TopKOptions
    codec_id = W.CODEC_IDS["topk"]

    @classmethod
    def wire_size(cls, shape: tuple[int, ...], k: int, value_width: int = 4) -> int:
        n = math.prod(shape)
        return W.header_size(len(shape)) + 8 + min(k * index_width(n), -(-n // 8)) + k * value_width

    def encode(self, x: torch.Tensor, key: CodecKey) -> torch.Tensor:
        flat = x.detach().reshape(-1)
        n = flat.numel()
        k = self.options.count(n)
        idx = top_indices(flat, k)
        flags = self._flags()
        if uses_bitmap(n, k):
            flags |= W.FLAG_BITMAP
            index = torch.zeros(-(-n // 8), dtype=torch.uint8, device=x.device)
            index.index_add_(0, idx >> 3, (1 << (idx & 7)).to(torch.uint8))
        else:
            wide = index_width(n) == 8
            flags |= W.FLAG_INDEX_INT64 if wide else 0
            index = idx.to(torch.int64 if wide else torch.int32)
        head = W.pack_header(self.codec_id, x, flags) + struct.pack("<Q", k)
        return torch.cat([W.as_wire(head, x.device), index.view(torch.uint8).view(-1),
                          _values(flat, idx, self.value_dtype).view(torch.uint8).view(-1)])

    @classmethod
    def decode_wire(cls, wire: torch.Tensor, header: W.Header) -> torch.Tensor:
        n = header.numel
        (k,) = W.unpack(wire, header.size, "Q")
        at = header.size + 8
        vdtype = _value_dtype(header.flags)
        if header.flags & W.FLAG_BITMAP:
            nbytes = -(-n // 8)
            bits = wire[at:at + nbytes]
            shifts = torch.arange(8, dtype=torch.uint8, device=wire.device)
            mask = ((bits[:, None] >> shifts) & 1).view(-1).bool()
            if mask[n:].any():
                raise ValueError("topk bitmap marks coordinates past the end of the tensor")
            idx = torch.nonzero(mask[:n]).view(-1)
            if idx.numel() != k:
                raise ValueError(f"topk bitmap marks {idx.numel()} coordinates, header says {k}")
        else:
            itype = torch.int64 if header.flags & W.FLAG_INDEX_INT64 else torch.int32
            nbytes = k * (8 if itype == torch.int64 else 4)
            idx = W.read(wire, at, k, itype).long()
        at += nbytes
        W.check_size(wire, at + k * vdtype.itemsize, cls.name)
        return _scatter(header, idx, W.read(wire, at, k, vdtype), wire.device)


class RandK(_Sparse):
    name = "randk"
    Options = RandKOptions
    codec_id = W.CODEC_IDS["randk"]

    @classmethod
    def wire_size(cls, shape: tuple[int, ...], k: int, value_width: int = 4) -> int:
        return W.header_size(len(shape)) + 16 + k * value_width

    def encode(self, x: torch.Tensor, key: CodecKey) -> torch.Tensor:
        flat = x.detach().reshape(-1)
        n = flat.numel()
        k = self.options.count(n)
        seed = key_seed(key, self.name)
        idx = sample_indices(n, k, seed).to(x.device)
        scale = n / k if self.options.rescale and k else 1.0
        head = W.pack_header(self.codec_id, x, self._flags()) + struct.pack("<QQ", k, seed)
        return torch.cat([W.as_wire(head, x.device), _values(flat, idx, self.value_dtype, scale).view(torch.uint8)])

    @classmethod
    def decode_wire(cls, wire: torch.Tensor, header: W.Header) -> torch.Tensor:
        n = header.numel
        k, seed = W.unpack(wire, header.size, "QQ")
        if k > n:
            raise ValueError(f"randk message keeps {k} of {n} coordinates")
        vdtype = _value_dtype(header.flags)
        at = header.size + 16
        W.check_size(wire, at + k * vdtype.itemsize, cls.name)
        return _scatter(header, sample_indices(n, k, seed), W.read(wire, at, k, vdtype), wire.device)
