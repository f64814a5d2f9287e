"""Krum and multi-Krum (Blanchard et al., NeurIPS 2017).

With f byzantine clients among n, each update's score is the sum of its
squared distances to its n − f − 2 nearest others; Krum keeps the update of
lowest score, multi-Krum the m lowest and averages them weighted by the
clients' weights (as Flower does; m = 1 is Krum). The guarantee needs
n > 2f + 2, refused otherwise at config time (clients_per_round) and at run
time (the arrived count). Distances are translation-invariant, so deltas and
states select the same clients. Ties go to the lower slot.

Distances come from the Gram matrix, accumulated in float64 over column
blocks: ‖a−b‖² = ‖a‖² + ‖b‖² − 2a·b, working space n² + n × block doubles,
never n² × d. A non-finite update gets an infinite score.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from fedmpi.errors import ConfigError
from fedmpi.options import at_least, option, positive
from fedmpi.strategies.robust import RobustAggregator, AggregatorOptions, column_blocks, normalized


@dataclass
class KrumOptions(AggregatorOptions):
    name: str = option("krum")
    f: int = option(1, check=at_least(0), help="byzantine clients tolerated (needs n > 2f + 2)")


@dataclass
class MultiKrumOptions(KrumOptions):
    name: str = option("multi_krum")
    m: int = option(2, check=positive, help="lowest-score updates averaged (at most n − f)")


def squared_distances(deltas: torch.Tensor, chunk_elements: int) -> torch.Tensor:
    """n × n squared L2 distances (float64), diagonal +inf, non-finite -> +inf."""
    n = deltas.shape[0]
    gram = torch.zeros(n, n, dtype=torch.float64, device=deltas.device)
    for cols in column_blocks(*deltas.shape, chunk_elements):
        block = deltas[:, cols].to(torch.float64)
        gram.addmm_(block, block.T)
    sq = gram.diagonal().clone()
    dist = (sq[:, None] + sq[None, :] - 2 * gram).clamp_min_(0)
    dist[~torch.isfinite(dist)] = float("inf")
    dist.fill_diagonal_(float("inf"))
    return dist


def krum_scores(deltas: torch.Tensor, f: int, chunk_elements: int) -> torch.Tensor:
    n = deltas.shape[0]
    dist = squared_distances(deltas, chunk_elements)
    nearest = torch.topk(dist, n - f - 2, dim=1, largest=False).values
    return nearest.sum(1)


class Krum(RobustAggregator):
    name = "krum"
    Options = KrumOptions
    needs_each_update = True

    @property
    def keep(self) -> int:
        return 1

    def min_clients(self) -> int:
        return 2 * self.options.f + 3

    def requirement(self) -> str:
        f = self.options.f
        return f"with {self.key}.f = {f} needs more than 2f + 2 = {2 * f + 2} clients per round"

    @classmethod
    def check(cls, cfg) -> None:
        super().check(cfg)
        agg = cls(cfg.strategy.aggregator)
        k, f = cfg.federation.clients_per_round, agg.options.f
        if agg.keep > k - f:
            raise ConfigError(f"{cls.key}.m ({agg.keep}) must be <= federation.clients_per_round − "
                              f"{cls.key}.f = {k - f}")

    def select(self, deltas: torch.Tensor) -> list[int]:
        """Slots of the kept updates, lowest score first."""
        n = deltas.shape[0]
        scores = krum_scores(deltas, self.options.f, self.chunk_elements)
        order = sorted(range(n), key=lambda i: (float(scores[i]), i))
        return order[:min(self.keep, n - self.options.f)]

    def combine(self, deltas: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        chosen = self.select(deltas)
        self.selected = chosen  # for metrics / tests
        w = normalized(weights[chosen], deltas)
        out = torch.empty(deltas.shape[1], dtype=deltas.dtype, device=deltas.device)
        for cols in column_blocks(len(chosen), deltas.shape[1], self.chunk_elements):
            out[cols] = (w @ deltas[:, cols][chosen].to(torch.float64)).to(deltas.dtype)
        return out


class MultiKrum(Krum):
    name = "multi_krum"
    Options = MultiKrumOptions

    @property
    def keep(self) -> int:
        return self.options.m
