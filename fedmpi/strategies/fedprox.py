"""FedProx (Li et al., MLSys 2020): a proximal term keeps local training near the global model.

The local objective is  F_i(w) + μ/2·‖w − w_global‖².  Its gradient term
μ·(w − w_global) is added to each parameter's gradient after backward (exact,
and it costs no autograd graph: 2 FLOPs a coordinate a step, no extra
activation memory). `penalty` is the term's value, for logging and tests;
the engine must not also add it to the loss. μ = 0 is FedAvg.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from fedmpi.options import at_least, option
from fedmpi.strategies.client import ClientOptions, ClientStrategy, add_to_grad, views


@dataclass
class FedProxOptions(ClientOptions):
    name: str = option("fedprox")
    mu: float = option(0.01, check=at_least(0), help="proximal weight μ of μ/2·‖w − w_global‖²")


class FedProx(ClientStrategy):
    name = "fedprox"
    Options = FedProxOptions

    def __init__(self, options: Any = None, **kw: Any) -> None:
        super().__init__(options, **kw)
        self._global: list[torch.Tensor] = []

    def begin(self, params, glob, state, payload) -> None:
        self._global = [g.detach() for g in views(glob, params)]

    def after_backward(self, params: list[torch.Tensor]) -> None:
        mu = self.options.mu
        if mu == 0:
            return
        with torch.no_grad():
            for p, g in zip(params, self._global):
                add_to_grad(p, (p - g).mul_(mu))

    def penalty(self, params: list[torch.Tensor]) -> torch.Tensor:
        """μ/2·‖w − w_global‖² (differentiable)."""
        return 0.5 * self.options.mu * sum(((p - g) ** 2).sum() for p, g in zip(params, self._global))

    def flops_per_step(self, numel: int) -> int:
        return 3 * numel if self.options.mu else 0
