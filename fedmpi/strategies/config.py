"""The `strategy` config section, ready to nest in ExperimentConfig:

    strategy: StrategyConfig = option(default_factory=StrategyConfig)

    strategy:
      server: {name: fedadam, lr: 0.01, beta1: 0.9, beta2: 0.99, tau: 0.001}
      client: {name: scaffold}                 # none | fedprox (mu) | scaffold
      aggregator: {name: krum, f: 1}            # mean | median | trimmed_mean | krum | multi_krum | norm_clip
      privacy: {name: dp, noise_multiplier: 1.0, clip: 0.1, adaptive: true}

Each part's keys come from the chosen entry's Options (fedmpi.options); the
checks across sections (Krum's f against clients_per_round, DP with a robust
aggregator, SCAFFOLD with AdamW, ...) are `check_strategies(cfg)` in
checks.py, for ExperimentConfig.validate to call.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fedmpi.options import option
from fedmpi.registry import AGGREGATORS, CLIENT_STRATEGIES, PRIVACY, SERVER_STRATEGIES


def _default(registry: Any, name: str) -> Any:
    return lambda: registry.get(name).Options()


@dataclass
class StrategyConfig:
    server: Any = option(default_factory=_default(SERVER_STRATEGIES, "fedavg"), select=SERVER_STRATEGIES,
                         help="server optimiser on the aggregate")
    client: Any = option(default_factory=_default(CLIENT_STRATEGIES, "none"), select=CLIENT_STRATEGIES,
                         help="hooks around local training")
    aggregator: Any = option(default_factory=_default(AGGREGATORS, "mean"), select=AGGREGATORS,
                             help="how the arrived updates are combined")
    privacy: Any = option(default_factory=_default(PRIVACY, "none"), select=PRIVACY,
                          help="differential privacy of the aggregate")
