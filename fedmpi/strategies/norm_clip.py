"""Norm-bounded aggregation (Sun et al., "Can you really backdoor federated learning?", 2019).

Each client's delta w.r.t. the global model is scaled to norm at most C
(Δ·min(1, C/‖Δ‖)), then the weighted mean is taken: client i moves the model
by at most (w_i/Σw)·C and the aggregate by at most C. Deltas, not states:
the clip is relative to the model the clients started from. A non-finite
update contributes nothing (its clipped delta is zero). The same clip is
DP-FedAvg's first step (dp.py), which is why `clip_to_norm` lives here.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from fedmpi.options import option, positive
from fedmpi.strategies.robust import RobustAggregator, AggregatorOptions, column_blocks, normalized


@dataclass
class NormClipOptions(AggregatorOptions):
    name: str = option("norm_clip")
    clip: float = option(1.0, check=positive, help="L2 bound C on each client's delta")


def clip_to_norm(delta: torch.Tensor, clip: float) -> tuple[torch.Tensor, float]:
    """(delta scaled to norm <= clip, its norm before), norm in float64; non-finite -> zeros, inf."""
    norm = float(torch.linalg.vector_norm(delta, dtype=torch.float64))
    if norm != norm or norm == float("inf"):
        return torch.zeros_like(delta), float("inf")
    return (delta * (clip / norm) if norm > clip else delta), norm


class NormClip(RobustAggregator):
    name = "norm_clip"
    Options = NormClipOptions
    needs_each_update = False  # each rank can clip its own clients' deltas before the sum

    def factors(self, deltas: torch.Tensor) -> torch.Tensor:
        """Per client: min(1, C/‖Δ_i‖) (0 for a non-finite update), float64."""
        norms = torch.zeros(deltas.shape[0], dtype=torch.float64, device=deltas.device)
        for cols in column_blocks(*deltas.shape, self.chunk_elements):
            norms += deltas[:, cols].to(torch.float64).pow(2).sum(1)
        norms = norms.sqrt()
        scale = torch.clamp(self.options.clip / norms, max=1.0)
        return torch.where(torch.isfinite(norms), scale, torch.zeros_like(scale))

    def combine(self, deltas: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        w = normalized(weights, deltas) * self.factors(deltas)
        out = torch.empty(deltas.shape[1], dtype=deltas.dtype, device=deltas.device)
        for cols in column_blocks(*deltas.shape, self.chunk_elements):
            block = torch.nan_to_num(deltas[:, cols].to(torch.float64), nan=0.0, posinf=0.0, neginf=0.0)
            out[cols] = (w @ block).to(deltas.dtype)
        return out
