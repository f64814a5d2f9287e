"""FedAvgM: server momentum on the pseudo-gradient (Hsu et al. 2019; Reddi et al. 2021, Alg. 1 with momentum).

    Δ = mean − x;  v ← μ·v + Δ;  x ← x + η·v

With η = 1 and μ = 0 this is FedAvg. The momentum buffer is one float32
vector of the trainable size (see adaptive.py for why float32).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from fedmpi.net.flat import unflatten_into
from fedmpi.options import in_range, option, positive
from fedmpi.strategies.base import MomentState, ServerOptions, ServerStrategy, pseudo_gradient


@dataclass
class FedAvgMOptions(ServerOptions):
    name: str = option("fedavgm")
    lr: float = option(1.0, check=positive, help="server learning rate η")
    momentum: float = option(0.9, check=in_range(0, 1, high_open=True), help="server momentum μ")


class FedAvgM(ServerStrategy):
    name = "fedavgm"
    Options = FedAvgMOptions

    def __init__(self, options: Any = None) -> None:
        super().__init__(options)
        self.moments = MomentState()

    def apply(self, params: list[torch.Tensor], mean: torch.Tensor, rnd: int) -> None:
        o = self.options
        glob, delta = pseudo_gradient(params, mean)
        v = self.moments.get("momentum", delta)
        v.mul_(o.momentum).add_(delta)
        self.moments.steps += 1
        unflatten_into(glob.add_(v, alpha=o.lr), params)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.moments.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.moments.load_state_dict(state)
