"""From a client's trained state to the round's new global state, in a fixed order.

    client:  delta = trained - global  ->  clip (DP: to C, with the unclipped bit; norm_clip: to C)
             -> encode/decode with the client's codec state (error feedback)  ->  bound (DP, again to C)
    server:  aggregate (weighted mean | DP: uniform sum / fixed denominator + noise | robust: every update)
             -> new global = exact global + aggregated delta  ->  server strategy (optimiser)

The plain case (fp32 both ways, mean, no DP, no clipping) skips deltas: the
server averages the decoded states themselves, bit for bit as before codecs
and strategies existed. Anything else works on deltas: the server keeps its
exact global model, so a lossy download does not leak into it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from fedmpi.engine.aggregate import Aggregator, GatherAggregator, RoundSum
from fedmpi.metering.ledger import UP
from fedmpi.net.flat import flatten
from fedmpi.strategies.norm_clip import NormClip, clip_to_norm
from fedmpi.strategies.robust import RobustAggregator


@dataclass
class Sent:
    value: torch.Tensor  # what the server aggregates (a state, or a delta)
    nbytes: int
    bit: float = 0.0


class Uplink:
    def __init__(self, link: Any, kind: str, aggregator: RobustAggregator, privacy: Any) -> None:
        self.link, self.kind = link, kind
        self.aggregator = aggregator
        self.privacy = privacy if getattr(privacy, "name", "none") == "dp" else None
        self._wide: torch.Tensor | None = None  # the server's float64 scratch (new_global)
        self.clip = aggregator.options.clip if isinstance(aggregator, NormClip) else None
        transport = link.transport
        self.deltas = not (transport.up.lossless and transport.down.lossless and self.privacy is None
                           and self.clip is None and not aggregator.needs_each_update
                           and type(aggregator) is RobustAggregator)

    # -- the client's rank -----------------------------------------------------
    def send(self, client: int, rnd: int, trained: torch.Tensor, glob: torch.Tensor,
             state: dict[str, torch.Tensor] | None) -> Sent:
        link = self.link
        if not self.deltas:
            sent = link.encode(UP, self.kind, trained, client, reference=glob, state=state)
            return Sent(sent.received, sent.nbytes)
        delta, bit = trained - glob, 0.0
        if self.privacy is not None:
            delta, bit = self.privacy.privatize(delta, client, rnd)
        elif self.clip is not None:
            delta = clip_to_norm(delta, self.clip)[0]
        sent = link.encode(UP, self.kind, delta, client, state=state)
        received = sent.received if self.privacy is None else self.privacy.bound(sent.received)
        return Sent(received, sent.nbytes, bit)

    def aggregator_for(self, fed: Any, buffers: dict, sampled: list[int], numel: int,
                       extra_kind: str | None) -> Aggregator:
        cls = GatherAggregator if self.aggregator.needs_each_update else Aggregator
        return cls(self.link, fed, buffers, sampled, numel, kind=self.kind,
                   extra_numel=numel if extra_kind else 0, extra_kind=extra_kind,
                   normalize=self.privacy is None)

    # -- the server --------------------------------------------------------------
    def new_global(self, params: list[torch.Tensor], result: RoundSum, rnd: int) -> torch.Tensor | None:
        """The state the server strategy gets as the round's mean (None: keep the global model)."""
        if not self.deltas:
            return result.value
        if self.privacy is not None:  # noise is released even when nobody arrived
            total = result.value if result.value is not None else torch.zeros(
                sum(p.numel() for p in params), dtype=torch.float64, device=params[0].device)
            return self._exact_plus(params, self.privacy.release(total.double(), result.bits, rnd))
        if self.aggregator.needs_each_update:
            if result.stack is None:
                return None
            return self._exact_plus(params, self.aggregator.aggregate(result.stack, result.weights, rnd))
        return None if result.value is None else self._exact_plus(params, result.value)

    def _exact_plus(self, params: list[torch.Tensor], delta: torch.Tensor) -> torch.Tensor:
        """float64(the server's own global state) + delta, in one reused float64 buffer.

        The same numbers as `flatten(params).double() + delta.double()`, without its
        three full-size temporaries: on a full-FT MiniLM those cost the server ~0.4 s
        a round in page faults alone (bench/NOTES.md). The buffer is only read by the
        server strategy's `apply`, which keeps no reference to it."""
        n = sum(p.numel() for p in params)
        buf = self._wide
        if buf is None or buf.numel() != n or buf.device != params[0].device:
            buf = self._wide = torch.empty(n, dtype=torch.float64, device=params[0].device)
        return flatten(params, out=buf).add_(delta.to(buf.device))
