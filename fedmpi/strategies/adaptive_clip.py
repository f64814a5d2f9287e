"""Adaptive clipping (Andrew et al., "Differentially private learning with adaptive clipping", NeurIPS 2021).

The clip norm C tracks a target quantile γ of the clients' update norms:
each client reports b_i = 1[‖Δ_i‖ ≤ C]; the server forms the noised fraction
b̄ = (Σ b_i + N(0, σ_b²)) / m (m the expected clients per round) and sets
C ← C·exp(−η_C·(b̄ − γ)) for the next round (geometric update).

Privacy: the counts are a second Gaussian query on the same clients. With
σ_b on the count (sensitivity 1/2 once b_i − 1/2 is summed), the update
noise multiplier z_Δ = (z⁻² − (2σ_b)⁻²)^(−1/2) makes the pair exactly as
private as one Gaussian query of multiplier z, so the accountant still uses
z. Defaults as Flower's server-side adaptive clipping: C₀ = 0.1, γ = 0.5,
η_C = 0.2, σ_b = m/20.
"""
from __future__ import annotations

import math

import torch


def count_stddev(noise_multiplier: float, expected_clients: float, given: float | None) -> float:
    """σ_b: as given, else m/20 when there is noise at all, else 0."""
    if given is not None:
        return float(given)
    return expected_clients / 20 if noise_multiplier > 0 else 0.0


def update_noise_multiplier(noise_multiplier: float, sigma_b: float) -> float:
    """z_Δ with z the overall multiplier; needs z < 2σ_b (checked at config time)."""
    if noise_multiplier == 0:
        return 0.0
    if sigma_b == 0:
        return noise_multiplier
    rest = noise_multiplier ** -2 - (2 * sigma_b) ** -2
    if rest <= 0:
        raise ValueError(f"noise multiplier {noise_multiplier} needs a clipped-count stddev > "
                         f"{noise_multiplier / 2}, got {sigma_b}")
    return rest ** -0.5


class AdaptiveClip:
    """The clip norm and its update; state is the current C (for resume)."""

    def __init__(self, initial: float, target_quantile: float, lr: float, sigma_b: float,
                 expected_clients: float) -> None:
        self.clip = float(initial)
        self.target = target_quantile
        self.lr = lr
        self.sigma_b = sigma_b
        self.expected = expected_clients

    def update(self, unclipped: float, generator: torch.Generator) -> float:
        """Absorb the round's count Σ b_i; returns the noised fraction b̄."""
        noise = float(torch.randn((), generator=generator, dtype=torch.float64)) * self.sigma_b
        fraction = (unclipped + noise) / self.expected
        self.clip *= math.exp(-self.lr * (fraction - self.target))
        return fraction
