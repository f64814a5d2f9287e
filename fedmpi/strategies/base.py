"""The strategy seam: what the server does with the round's aggregate.

The engine hands the server strategy the global `params` and the round's
aggregate state `mean` (the sample-weighted mean of the arrived clients'
states as the server decoded them, or what a robust aggregator or DP made of
them, always expressed as a state: global + aggregated delta). FedAvg takes
the mean as the new global state; the server optimisers (fedavgm.py,
adaptive.py) treat Δ = mean − global as a pseudo-gradient (Reddi et al.,
"Adaptive Federated Optimization", ICLR 2021).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from fedmpi.net.flat import flatten, unflatten_into
from fedmpi.options import option


@dataclass
class ServerOptions:
    """`strategy.server`: every server strategy's options start with its name."""
    name: str = option("fedavg", help="server optimiser on the aggregate (see SERVER_STRATEGIES)")


class ServerStrategy:
    name: ClassVar[str] = "fedavg"
    Options: ClassVar[type] = ServerOptions

    def __init__(self, options: Any = None) -> None:
        self.options = options if options is not None else self.Options()

    @classmethod
    def check(cls, cfg: Any) -> None:
        """Refuse combinations the options alone cannot see (a ConfigError), from the config."""

    def apply(self, params: list[torch.Tensor], mean: torch.Tensor, rnd: int) -> None:
        """Write the next global state into `params` (server only)."""
        unflatten_into(mean, params)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore what `state_dict` saved (momentum, moments, ...)."""


def pseudo_gradient(params: list[torch.Tensor], mean: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(global, Δ = mean − global), both flat in the params' dtype.

    The mean may arrive in float64 (federation.aggregation_dtype): the
    difference is taken in the wider type and rounded once, so Δ keeps the
    digits a float32 subtraction of two nearby states would cancel."""
    glob = flatten(params)
    if mean.dtype == glob.dtype:
        return glob, mean.to(glob.device) - glob
    wide = torch.promote_types(mean.dtype, glob.dtype)
    return glob, (mean.to(glob.device, wide) - glob.to(wide)).to(glob.dtype)


class MomentState:
    """Named flat float32 buffers (momentum, second moments), created at the first
    round on the params' device, saved on the CPU and restored exactly."""

    def __init__(self) -> None:
        self.buffers: dict[str, torch.Tensor] = {}
        self.steps = 0  # rounds applied (bias correction, resume)

    def get(self, name: str, like: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
        buf = self.buffers.get(name)
        if buf is None:
            buf = self.buffers[name] = torch.full_like(like, fill)
        elif buf.device != like.device:
            buf = self.buffers[name] = buf.to(like.device)
        return buf

    def state_dict(self) -> dict[str, torch.Tensor]:
        if not self.buffers:
            return {}
        out = {k: v.detach().to("cpu", copy=True) for k, v in self.buffers.items()}
        out["steps"] = torch.tensor(self.steps, dtype=torch.int64)
        return out

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        state = dict(state)
        self.steps = int(state.pop("steps", 0))
        self.buffers = {k: v.clone() for k, v in state.items()}
