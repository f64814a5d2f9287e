"""The codec seam: every message the Link carries is encoded and decoded by a codec.

A codec turns a tensor into the bytes a deployment would put on the wire and
back. The Ledger charges the length of those bytes, so accounting is exact by
construction; the cluster itself may move the *decoded* tensor (an emulator
needs the numerical effect plus the exact byte count). Randomness a codec uses
(stochastic rounding, random-k) comes from a `CodecKey` of (seed, round,
client, kind), never from the rank, so results do not depend on rank packing.

`Identity` (`fp32`, the default) sends the tensor as it is: numel x element
size, no header, and no copy. Integer and boolean messages (masks, indices)
always go as they are.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from fedmpi.options import option


@dataclass(frozen=True)
class CodecKey:
    seed: int
    round: int
    client: int  # -1: the server's broadcast
    kind: str


@dataclass
class Transmitted:
    received: torch.Tensor  # what the receiver decodes
    nbytes: int  # what crossed the emulated link
    raw_bytes: int = 0  # the message as it was (numel x element size), for compression ratios


@dataclass
class CodecOptions:
    name: str = option("fp32")


class Codec:
    """Base class. Subclasses implement `encode`/`decode`; `transmit` is the round trip."""
    name: ClassVar[str] = "codec"
    Options: ClassVar[type] = CodecOptions
    lossless: ClassVar[bool] = False

    def __init__(self, options: Any = None) -> None:
        self.options = options if options is not None else self.Options()

    def encode(self, x: torch.Tensor, key: CodecKey) -> torch.Tensor:
        """The wire bytes of `x` (a 1-D uint8 tensor)."""
        raise NotImplementedError

    def decode(self, wire: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """The tensor `wire` encodes, with `like`'s shape, dtype and device."""
        raise NotImplementedError

    def transmit(self, x: torch.Tensor, key: CodecKey, *, reference: torch.Tensor | None = None,
                 state: dict[str, torch.Tensor] | None = None) -> Transmitted:
        """Encode and decode `x` as the receiver would see it. With `reference` (a
        model both ends hold) the difference is encoded and the receiver adds it
        back; `state` is the sender's per-client codec state (error feedback)."""
        if not x.is_floating_point():
            return Transmitted(x, x.numel() * x.element_size())
        payload = x if reference is None else x - reference
        wire = self.encode(payload, key)
        received = self.decode(wire, payload)
        if reference is not None:
            received = received + reference
        return Transmitted(received, int(wire.numel()))


class Identity(Codec):
    """fp32 (or whatever dtype the tensor has) as it is: the bytes are the buffer itself."""
    name = "fp32"
    lossless = True

    def encode(self, x: torch.Tensor, key: CodecKey) -> torch.Tensor:
        return x.detach().contiguous().view(torch.uint8).reshape(-1)

    def decode(self, wire: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return wire.view(like.dtype).reshape(like.shape)

    def transmit(self, x: torch.Tensor, key: CodecKey, *, reference: torch.Tensor | None = None,
                 state: dict[str, torch.Tensor] | None = None) -> Transmitted:
        return Transmitted(x, x.numel() * x.element_size())


@dataclass
class Transport:
    """The codec of each direction, and of any message kind configured apart."""
    up: Codec
    down: Codec
    kinds: dict[str, Codec] = field(default_factory=dict)

    @classmethod
    def from_config(cls, cfg: Any) -> "Transport":
        from fedmpi.registry import CODECS

        make = lambda o: CODECS.get(o.name)(o)  # noqa: E731
        return cls(make(cfg.up), make(cfg.down), {k: make(o) for k, o in cfg.kinds.items()})

    def codec(self, direction: str, kind: str) -> Codec:
        if kind in self.kinds:
            return self.kinds[kind]
        return self.up if direction == "up" else self.down

    def describe(self) -> dict[str, str]:
        """direction/kind -> codec name, for summaries."""
        out = {"up": self.up.name, "down": self.down.name}
        out.update({f"kind:{k}": c.name for k, c in self.kinds.items()})
        return out
