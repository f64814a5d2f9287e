"""Adaptive server optimisers: FedAdagrad, FedAdam, FedYogi (Reddi et al., ICLR 2021, Algorithm 2).

On the pseudo-gradient Δ = mean − x of each round:

    m ← β1·m + (1 − β1)·Δ
    v ← v + Δ²                                  (FedAdagrad)
    v ← β2·v + (1 − β2)·Δ²                      (FedAdam)
    v ← v − (1 − β2)·Δ²·sign(v − Δ²)            (FedYogi)
    x ← x + η·m / (√v + τ)

m starts at 0 and v at τ² (the paper's v₋₁ ≥ τ²). τ (the adaptivity) bounds
the step where v is tiny. The paper has no bias correction; `bias_correction`
adds Adam's (η·√(1−β2ᵗ)/(1−β1ᵗ), as Flower's FedAdam does), off by default.

Moments are float32, like the params and like torch.optim's Adam state:
Δ is rounded to float32 anyway when the step lands in float32 params, the
ratio m/(√v+τ) loses nothing measurable at 24 mantissa bits, and float64
would double the server's 2×d optimiser memory (1.5 GB for a 182M-trainable
model instead of 0.7 GB). Resume is exact either way: the buffers and the
round count are saved bit for bit.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from fedmpi.net.flat import unflatten_into
from fedmpi.options import in_range, option, positive
from fedmpi.strategies.base import MomentState, ServerOptions, ServerStrategy, pseudo_gradient

_BETA = in_range(0, 1, high_open=True)


@dataclass
class AdagradOptions(ServerOptions):
    name: str = option("fedadagrad")
    lr: float = option(1e-2, check=positive, help="server learning rate η")
    beta1: float = option(0.9, check=_BETA, help="first-moment decay β1 (0: no momentum)")
    tau: float = option(1e-3, check=positive, help="adaptivity τ: v starts at τ², step = m/(√v+τ)")
    bias_correction: bool = option(False, help="Adam-style bias correction of η (not in the paper)")


@dataclass
class AdamOptions(AdagradOptions):
    name: str = option("fedadam")
    beta2: float = option(0.99, check=_BETA, help="second-moment decay β2")


@dataclass
class YogiOptions(AdamOptions):
    name: str = option("fedyogi")


class AdaptiveServer(ServerStrategy):
    """The shared step; subclasses say how v absorbs Δ²."""
    Options: ClassVar[type] = AdamOptions

    def __init__(self, options: Any = None) -> None:
        super().__init__(options)
        self.moments = MomentState()

    def second_moment(self, v: torch.Tensor, sq: torch.Tensor) -> None:
        raise NotImplementedError

    def apply(self, params: list[torch.Tensor], mean: torch.Tensor, rnd: int) -> None:
        o = self.options
        glob, delta = pseudo_gradient(params, mean)
        m = self.moments.get("m", delta)
        v = self.moments.get("v", delta, fill=o.tau ** 2)
        m.mul_(o.beta1).add_(delta, alpha=1 - o.beta1)
        self.second_moment(v, delta.mul_(delta))  # delta is dead after m: reuse it for Δ²
        self.moments.steps += 1
        lr = o.lr
        if o.bias_correction:
            t = self.moments.steps
            lr *= math.sqrt(1 - getattr(o, "beta2", 0.0) ** t) / (1 - o.beta1 ** t)  # Adagrad: no β2
        step = torch.sqrt(v, out=delta).add_(o.tau)
        torch.div(m, step, out=step)
        unflatten_into(glob.add_(step, alpha=lr), params)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.moments.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.moments.load_state_dict(state)


class FedAdagrad(AdaptiveServer):
    name = "fedadagrad"
    Options = AdagradOptions

    def second_moment(self, v: torch.Tensor, sq: torch.Tensor) -> None:
        v.add_(sq)


class FedAdam(AdaptiveServer):
    name = "fedadam"
    Options = AdamOptions

    def second_moment(self, v: torch.Tensor, sq: torch.Tensor) -> None:
        v.mul_(self.options.beta2).add_(sq, alpha=1 - self.options.beta2)


class FedYogi(AdaptiveServer):
    name = "fedyogi"
    Options = YogiOptions

    def second_moment(self, v: torch.Tensor, sq: torch.Tensor) -> None:
        v.sub_(torch.sign(v - sq).mul_(sq), alpha=1 - self.options.beta2)
