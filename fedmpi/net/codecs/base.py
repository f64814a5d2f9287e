"""What every lossy codec shares: error feedback, keyed randomness, the decode checks.

Error feedback (Seide et al. 2014; Karimireddy et al. 2019, EF-SGD): the sender
adds what earlier messages of the same kind failed to carry, and keeps what
this one fails to carry,

    corrected = payload + residual_prev
    residual  = corrected - decode(encode(corrected))

so over rounds the receiver's sum of decoded messages tracks the sum of
payloads up to one bounded residual. The residual lives in the sender's
per-client `state` dict under `residual_key(kind)`; the engine persists that
dict between a client's participations. `state=None` turns it off for a call.
The residual tensor is updated in place (a full-FT residual is the model's
size): the engine's states are each rank's own received copies; a caller
that wants the old residual keeps a clone.

Randomness (stochastic rounding, random-k) comes from a CPU `torch.Generator`
seeded from the CodecKey (seed, round, client, crc32(kind)) and a purpose
string, never from global RNG state, the rank or the device, so a message is
the same however clients are packed and whichever device moves it.
"""
from __future__ import annotations

import zlib
from typing import ClassVar

import torch

from fedmpi.net.codec import Codec, CodecKey, Transmitted
from fedmpi.net.codecs import wire as W
from fedmpi.seeding import derive_seed

# Elements processed per step by the chunked kernels: small enough that the
# fp32 scratch (4 MiB) stays in cache, large enough that Python overhead is nil.
CHUNK = 1 << 20


def residual_key(kind: str) -> str:
    return f"codec_residual/{kind}"


def stable_hash(text: str) -> int:
    return zlib.crc32(text.encode("utf-8"))


def keyed_generator(key: CodecKey, purpose: str) -> torch.Generator:
    """A CPU generator that depends on the key and `purpose` only."""
    g = torch.Generator(device="cpu")
    g.manual_seed(key_seed(key, purpose))
    return g


def key_seed(key: CodecKey, purpose: str) -> int:
    return derive_seed(key.seed, key.round, key.client, stable_hash(key.kind), stable_hash(purpose))


class LossyCodec(Codec):
    """A codec with a wire header and optional error feedback (`options.error_feedback`)."""
    codec_id: ClassVar[int] = 0

    def transmit(self, x: torch.Tensor, key: CodecKey, *, reference: torch.Tensor | None = None,
                 state: dict[str, torch.Tensor] | None = None) -> Transmitted:
        if not x.is_floating_point():
            return Transmitted(x, x.numel() * x.element_size())
        payload = x.detach() if reference is None else x.detach() - reference
        owned = reference is not None  # payload is our own temporary, free to overwrite
        feedback = bool(getattr(self.options, "error_feedback", False)) and state is not None
        if feedback:
            name = residual_key(key.kind)
            residual = state.get(name)
            if residual is not None:
                if residual.shape != payload.shape:
                    raise ValueError(f"codec residual '{name}' has shape {tuple(residual.shape)} but the message "
                                     f"has {tuple(payload.shape)}: a message kind must keep its layout")
                if residual.device == payload.device and residual.dtype == payload.dtype:
                    payload = residual.add_(payload)  # in place: a full-size temporary less
                else:
                    payload = payload + residual.to(device=payload.device, dtype=payload.dtype)
                owned = True
        wire, decoded = self.encode_decoded(payload, key)
        if feedback:  # the new residual, in the old one's memory when it had one
            state[name] = payload.sub_(decoded) if owned else payload - decoded
        received = decoded if reference is None else decoded + reference
        return Transmitted(received, int(wire.numel()))

    def encode_decoded(self, x: torch.Tensor, key: CodecKey) -> tuple[torch.Tensor, torch.Tensor]:
        """(encode(x), what the receiver decodes from it); codecs that can rebuild the
        decoded values while encoding override this to save decode's pass."""
        wire = self.encode(x, key)
        return wire, self.decode(wire, x)

    def decode(self, wire: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        header = W.parse_header(wire)
        if header.codec != self.codec_id:
            raise ValueError(f"{self.name} codec got a message of codec id {header.codec} "
                             f"(its own id is {self.codec_id})")
        if header.shape != tuple(like.shape) or header.dtype != like.dtype:
            raise ValueError(f"{self.name} message is {header.dtype} {header.shape}, "
                             f"expected {like.dtype} {tuple(like.shape)}")
        return self.decode_wire(wire, header).to(like.device)

    @classmethod
    def decode_wire(cls, wire: torch.Tensor, header: W.Header) -> torch.Tensor:
        """The tensor the message encodes, from its bytes alone (on `wire`'s device)."""
        raise NotImplementedError
