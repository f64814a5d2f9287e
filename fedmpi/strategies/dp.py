"""DP-FedAvg (McMahan et al., ICLR 2018): client-level differential privacy of the aggregate.

Each client's delta Δ_i = y_i − x is clipped to L2 norm C; the server sums
the arrived clipped deltas with uniform weights (dataset sizes would leak and
unbound a client's influence), divides by a FIXED denominator m (the
expected clients per round, default federation.clients_per_round; dropouts
do not shrink it, so one client moves the mean by at most C/m) and adds
N(0, (z·C/m)²) to every coordinate. `noise: local` instead has each client
add N(0, (z·C)²) to its own clipped delta (local DP: no trusted server;
nothing added centrally). `adaptive` tracks C (adaptive_clip.py).

The engine's fixed order of operations, every round:

  1. client:  Δ_i = y_i − x;  clip(Δ_i, C) -> b_i = 1[‖Δ_i‖ ≤ C];  local noise (noise: local)
  2. codec:   encode/decode the clipped delta (reference x), error feedback on
              the clipped delta; then `bound` clips the decoded delta again
              (a no-op for lossless codecs: keeps the sensitivity C whatever
              the codec's error did)
  3. aggregate: Σ over the arrived of the bounded deltas, weight 1 each (and Σ b_i)
  4. noise:   `release`: Σ/m + N(0, (z_Δ·C/m)²) (central), then C is adapted
  5. server optimiser: strategy.apply(params, x + released mean)

Noise comes from torch generators keyed by (seed, round[, client]) on the
CPU: reproducible and independent of rank packing and device. (A deployment
would use a secret seed; an emulator wants the replay.)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from fedmpi.errors import ConfigError
from fedmpi.options import at_least, in_range, option, positive
from fedmpi.strategies.adaptive_clip import AdaptiveClip, count_stddev, update_noise_multiplier
from fedmpi.strategies.norm_clip import clip_to_norm

_CENTRAL, _LOCAL, _COUNT = 0xD9, 0x10C, 0xB17


@dataclass
class PrivacyOptions:
    """`strategy.privacy`: every privacy mechanism's options start with its name."""
    name: str = option("none", help="differential privacy of the aggregate (see PRIVACY)")


class NoPrivacy:
    name: ClassVar[str] = "none"
    Options: ClassVar[type] = PrivacyOptions

    def __init__(self, options: Any = None, **kw: Any) -> None:
        self.options = options if options is not None else self.Options()

    @classmethod
    def check(cls, cfg: Any) -> None:
        pass


@dataclass
class DPOptions(PrivacyOptions):
    name: str = option("dp")
    noise_multiplier: float = option(1.0, check=at_least(0), help="z: noise std z·C on the sum of clipped deltas")
    clip: float = option(0.1, check=positive, help="C: L2 bound of each client's delta (the start if adaptive)")
    noise: str = option("central", choices=("central", "local"), help="added by the server, or by each client")
    expected_clients: int | None = option(None, check=positive,
                                          help="fixed denominator m (default federation.clients_per_round)")
    adaptive: bool = option(False, help="adapt C to a quantile of the update norms (Andrew et al. 2021)")
    target_quantile: float = option(0.5, check=in_range(0, 1), help="γ: share of updates left unclipped")
    clip_lr: float = option(0.2, check=positive, help="η_C of C ← C·exp(−η_C(b̄ − γ))")
    count_stddev: float | None = option(None, check=at_least(0), help="σ_b on the unclipped count (default m/20)")
    delta: float = option(1e-5, check=in_range(0, 1, low_open=True, high_open=True), help="δ of the reported ε")


def generator(*key: int) -> torch.Generator:
    """A CPU generator from integers (seed, round, client, tag)."""
    seed = int(np.random.SeedSequence([int(k) for k in key]).generate_state(1, np.uint64)[0]) >> 1
    return torch.Generator(device="cpu").manual_seed(seed)


def gaussian_like(x: torch.Tensor, std: float, g: torch.Generator) -> torch.Tensor:
    return torch.randn(x.shape, generator=g, dtype=torch.float32).mul_(std).to(x.device, x.dtype)


class DPFedAvg:
    name: ClassVar[str] = "dp"
    Options: ClassVar[type] = DPOptions
    key: ClassVar[str] = "strategy.privacy"

    def __init__(self, options: Any = None, *, clients_per_round: int, seed: int = 0) -> None:
        o = self.options = options if options is not None else self.Options()
        self.seed = seed
        self.denominator = float(o.expected_clients or clients_per_round)
        self.sigma_b = count_stddev(o.noise_multiplier, self.denominator, o.count_stddev) if o.adaptive else 0.0
        self.z_update = update_noise_multiplier(o.noise_multiplier, self.sigma_b) if o.adaptive \
            else o.noise_multiplier
        self.adaptive = AdaptiveClip(o.clip, o.target_quantile, o.clip_lr, self.sigma_b, self.denominator) \
            if o.adaptive else None
        self._clip = o.clip
        self.last_fraction: float | None = None

    @classmethod
    def from_config(cls, cfg: Any) -> "DPFedAvg":
        return cls(cfg.strategy.privacy, clients_per_round=cfg.federation.clients_per_round, seed=cfg.seed)

    @classmethod
    def check(cls, cfg: Any) -> None:
        o, fed, k = cfg.strategy.privacy, cfg.federation, cls.key
        agg = cfg.strategy.aggregator.name
        if agg != "mean":
            raise ConfigError(f"{k}.name dp averages uniformly weighted clipped deltas over a fixed denominator "
                              f"({k}.expected_clients); strategy.aggregator.name {agg} cannot serve that: "
                              f"use strategy.aggregator.name mean (DP already bounds each client by {k}.clip)")
        if fed.over_selection > 1:
            raise ConfigError(f"{k}.name dp accounts for {fed.clients_per_round} clients drawn uniformly each "
                              f"round; federation.over_selection {fed.over_selection} keeps the fastest, which "
                              f"the accountant cannot describe: set federation.over_selection: 1")
        m = o.expected_clients or fed.clients_per_round
        if m > fed.num_clients:
            raise ConfigError(f"{k}.expected_clients ({m}) > federation.num_clients ({fed.num_clients})")
        if cfg.strategy.client.name == "scaffold":
            raise ConfigError(f"{k}.name dp protects the model update only: strategy.client.name scaffold would "
                              f"upload its control variates unclipped and without noise")
        if o.adaptive and o.noise == "local":
            raise ConfigError(f"{k}.adaptive needs {k}.noise: central (the unclipped count is noised "
                              f"by the server)")
        if o.adaptive and o.noise_multiplier > 0:
            sigma_b = count_stddev(o.noise_multiplier, m, o.count_stddev)
            if o.noise_multiplier >= 2 * sigma_b:
                raise ConfigError(f"{k}.noise_multiplier ({o.noise_multiplier}) must be < 2 × {k}.count_stddev "
                                  f"({sigma_b:g}{' = expected clients / 20' if o.count_stddev is None else ''}) "
                                  f"with {k}.adaptive: raise {k}.count_stddev or lower the multiplier")

    @property
    def clip(self) -> float:
        """This round's C (the clients clip to it; it goes down with the model)."""
        return self.adaptive.clip if self.adaptive is not None else self._clip

    # -- client side (on the client's rank, before the codec) ----------------
    def privatize(self, delta: torch.Tensor, client: int, rnd: int) -> tuple[torch.Tensor, float]:
        """(the clipped delta, plus local noise if noise: local; b_i = 1 if it was not clipped)."""
        clipped, norm = clip_to_norm(delta, self.clip)
        bit = 1.0 if norm <= self.clip else 0.0
        if self.options.noise == "local" and self.options.noise_multiplier > 0:
            clipped = clipped + gaussian_like(clipped, self.options.noise_multiplier * self.clip,
                                              generator(self.seed, rnd, client, _LOCAL))
        return clipped, bit

    def bound(self, decoded: torch.Tensor) -> torch.Tensor:
        """The decoded delta clipped again (central DP's sensitivity after a lossy codec)."""
        if self.options.noise == "local":
            return decoded  # already noised: clipping it would only bias the noise
        return clip_to_norm(decoded, self.clip)[0]

    # -- server side -------------------------------------------------------------
    def noise_std(self) -> float:
        """Std of the central noise on each coordinate of the mean: z_Δ·C/m."""
        if self.options.noise == "local":
            return 0.0
        return self.z_update * self.clip / self.denominator

    def release(self, delta_sum: torch.Tensor, unclipped: float, rnd: int) -> torch.Tensor:
        """Σ of the arrived bounded deltas (weight 1 each) and Σ b_i -> the private mean delta."""
        mean = delta_sum / self.denominator
        std = self.noise_std()
        if std > 0:
            mean.add_(gaussian_like(mean, std, generator(self.seed, rnd, _CENTRAL)))
        if self.adaptive is not None:
            self.last_fraction = self.adaptive.update(unclipped, generator(self.seed, rnd, _COUNT))
        return mean

    def spent(self, rounds: int, clients_per_round: int, num_clients: int,
              sampling: str = "without_replacement") -> float:
        """ε at `options.delta` after `rounds` rounds (central noise), from accounting.py.
        Costs ~0.1 s (Poisson) to ~0.3 s (without replacement) a call: report it at
        evaluation rounds and in the summary, not every round."""
        from fedmpi.strategies.accounting import epsilon, local_epsilon

        o = self.options
        if o.noise == "local":
            return local_epsilon(o.noise_multiplier, rounds, o.delta)  # a client taking part every round
        sample = clients_per_round / num_clients if sampling == "poisson" else (clients_per_round, num_clients)
        return epsilon(o.noise_multiplier, sample, rounds, o.delta, sampling)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"clip": torch.tensor(self.clip, dtype=torch.float64)} if self.adaptive is not None else {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if self.adaptive is not None and "clip" in state:
            self.adaptive.clip = float(state["clip"])
