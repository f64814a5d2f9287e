"""Privacy accounting for DP-FedAvg, by established libraries (no accountant of our own).

`epsilon(z, sample, rounds, δ, sampling)` is the (ε, δ) of `rounds` rounds of
the Gaussian mechanism with noise multiplier z on the sum of client deltas
clipped to C, each round over a sample of the clients:

- "without_replacement" (what fedmpi does: k of N distinct clients a round):
  Google's dp-accounting RDP accountant, SampledWithoutReplacementDpEvent
  (Wang, Balle, Kasiviswanathan, AISTATS 2019, Thm 27) under its only
  relation for it, REPLACE_ONE (N is public; a neighbour swaps one client's
  data). Swapping one clipped delta for another moves the sum by up to 2C,
  so the base Gaussian's multiplier is z/2 — passing z itself would claim
  sensitivity C and understate ε.
- "poisson" (each client joins independently with probability q): the same
  accountant with PoissonSampledDpEvent under ADD_OR_REMOVE_ONE
  (sensitivity C, multiplier z). `opacus_epsilon` is Opacus's RDP accountant
  (which assumes Poisson) on the same (q, z, rounds, δ), as a cross-check.

Both libraries are imported lazily: only runs that report ε need them
(pip install dp-accounting; opacus only for the cross-check).
"""
from __future__ import annotations

import math
from typing import Sequence

SAMPLINGS = ("without_replacement", "poisson")


def _rate(sample: float | tuple[int, int]) -> tuple[float, tuple[int, int] | None]:
    if isinstance(sample, (tuple, list)):
        k, n = (int(v) for v in sample)
        if not 0 < k <= n:
            raise ValueError(f"need 0 < clients_per_round <= num_clients, got {k} of {n}")
        return k / n, (k, n)
    q = float(sample)
    if not 0 < q <= 1:
        raise ValueError(f"sample rate must be in (0, 1], got {q}")
    return q, None


def _check(noise_multiplier: float, rounds: int, delta: float) -> None:
    if noise_multiplier < 0:
        raise ValueError(f"noise multiplier must be >= 0, got {noise_multiplier}")
    if rounds < 0:
        raise ValueError(f"rounds must be >= 0, got {rounds}")
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")


def epsilon(noise_multiplier: float, sample: float | tuple[int, int], rounds: int, delta: float,
            sampling: str = "without_replacement", orders: Sequence[float] | None = None) -> float:
    """ε after `rounds` rounds; `sample` is (clients_per_round, num_clients) or a rate q."""
    _check(noise_multiplier, rounds, delta)
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling must be one of {', '.join(SAMPLINGS)}, got {sampling!r}")
    if rounds == 0:
        return 0.0
    if noise_multiplier == 0:
        return math.inf
    import dp_accounting as dpa
    from dp_accounting.rdp import rdp_privacy_accountant as rdp

    q, counts = _rate(sample)
    gaussian = dpa.GaussianDpEvent(noise_multiplier)
    if sampling == "poisson":
        acc = rdp.RdpAccountant(orders, rdp.NeighborRel.ADD_OR_REMOVE_ONE)
        event = dpa.PoissonSampledDpEvent(q, gaussian)
    else:
        if counts is None:
            raise ValueError("sampling without replacement needs (clients_per_round, num_clients), not a rate")
        k, n = counts
        acc = rdp.RdpAccountant(orders, rdp.NeighborRel.REPLACE_ONE)
        event = dpa.SampledWithoutReplacementDpEvent(n, k, dpa.GaussianDpEvent(noise_multiplier / 2))
    acc.compose(dpa.SelfComposedDpEvent(event, rounds))
    return float(acc.get_epsilon(delta))


def opacus_epsilon(noise_multiplier: float, sample_rate: float, rounds: int, delta: float,
                   orders: Sequence[float] | None = None) -> float:
    """Opacus's RDP accountant (Poisson sampling) on the same inputs: the cross-check."""
    _check(noise_multiplier, rounds, delta)
    from opacus.accountants.analysis import rdp as ordp
    from dp_accounting.rdp.rdp_privacy_accountant import DEFAULT_RDP_ORDERS

    orders = list(orders or DEFAULT_RDP_ORDERS)
    rdp_values = ordp.compute_rdp(q=sample_rate, noise_multiplier=noise_multiplier, steps=rounds, orders=orders)
    eps, _ = ordp.get_privacy_spent(orders=orders, rdp=rdp_values, delta=delta)
    return float(eps)


def local_epsilon(noise_multiplier: float, participations: int, delta: float) -> float:
    """Local DP (noise: local): one client's ε over the rounds it took part in. Each
    release is its own clipped delta + N(0, (zC)²); swapping its data moves the
    delta by up to 2C (multiplier z/2); no amplification by sampling is claimed."""
    _check(noise_multiplier, participations, delta)
    if participations == 0:
        return 0.0
    if noise_multiplier == 0:
        return math.inf
    import dp_accounting as dpa
    from dp_accounting.rdp import rdp_privacy_accountant as rdp

    acc = rdp.RdpAccountant(None, rdp.NeighborRel.REPLACE_ONE)
    acc.compose(dpa.SelfComposedDpEvent(dpa.GaussianDpEvent(noise_multiplier / 2), participations))
    return float(acc.get_epsilon(delta))
