"""Checks across sections for the `strategy` config: one ConfigError naming the keys.

Single keys check themselves (their Options' `check=`); unknown names are the
registries' errors. What needs the rest of the config is here, for
ExperimentConfig.validate (and so the launcher's pre-flight) to call.
"""
from __future__ import annotations

from typing import Any

from fedmpi.errors import ConfigError
from fedmpi.registry import AGGREGATORS, CLIENT_STRATEGIES, PRIVACY, SERVER_STRATEGIES


def check_strategies(cfg: Any) -> None:
    """`cfg` has .strategy (StrategyConfig), .federation and .train (ExperimentConfig does)."""
    s = cfg.strategy
    SERVER_STRATEGIES.get(s.server.name).check(cfg)
    CLIENT_STRATEGIES.get(s.client.name).check(cfg)
    AGGREGATORS.get(s.aggregator.name).check(cfg)
    PRIVACY.get(s.privacy.name).check(cfg)
    if s.client.name == "scaffold" and s.aggregator.name not in ("mean", "norm_clip"):
        raise ConfigError(f"strategy.client.name scaffold averages its control variates over every arrived "
                          f"client; strategy.aggregator.name {s.aggregator.name} would drop or reshape "
                          f"updates without their variates: use strategy.aggregator.name mean")
