"""Bad strategy input: one ConfigError naming the keys, from the options or from check_strategies."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from fedmpi.config import ExperimentConfig, StrategyConfig, check_strategies
from fedmpi.errors import ConfigError
from fedmpi.options import build


def cfg_of(strategy: dict, clients_per_round: int = 6, num_clients: int = 20, optimizer: str = "sgd",
           over_selection: float = 1.0):
    base = ExperimentConfig()
    base.federation.clients_per_round, base.federation.num_clients = clients_per_round, num_clients
    base.federation.over_selection = over_selection
    base.train.optimizer = optimizer
    cfg = SimpleNamespace(strategy=build(StrategyConfig, strategy, "strategy."), federation=base.federation,
                          train=base.train, algorithm=base.algorithm)
    check_strategies(cfg)
    return cfg


def test_defaults_and_a_full_section_build():
    cfg = cfg_of({})
    assert (cfg.strategy.server.name, cfg.strategy.client.name, cfg.strategy.aggregator.name,
            cfg.strategy.privacy.name) == ("fedavg", "none", "mean", "none")
    cfg = cfg_of({"server": {"name": "fedyogi", "lr": "1e-2", "tau": 1e-4}, "client": "fedprox",
                  "aggregator": {"name": "multi_krum", "f": 1, "m": 3}})
    assert cfg.strategy.server.beta2 == 0.99 and cfg.strategy.server.lr == 0.01
    assert cfg.strategy.client.mu == 0.01 and cfg.strategy.aggregator.m == 3


@pytest.mark.parametrize("strategy, kw, match", [
    ({"server": {"name": "fedadm"}}, {}, r"unknown strategy.server.name 'fedadm' \(did you mean 'fedadam'\?\)"),
    ({"aggregator": "krumm"}, {}, r"unknown strategy.aggregator.name 'krumm'"),
    ({"server": {"name": "fedadam", "lr": 0}}, {}, r"strategy.server.lr must be > 0"),
    ({"server": {"name": "fedadam", "beta1": 1.0}}, {}, r"strategy.server.beta1 must be in \[0, 1\)"),
    ({"server": {"name": "fedyogi", "beta2": -0.1}}, {}, r"strategy.server.beta2 must be in \[0, 1\)"),
    ({"server": {"name": "fedadagrad", "tau": 0}}, {}, r"strategy.server.tau must be > 0"),
    ({"server": {"name": "fedadagrad", "beta2": 0.9}}, {}, r"config key 'strategy.server.beta2' does not apply to strategy.server.name 'fedadagrad': it is an option of 'fedadam' and 'fedyogi'"),
    ({"server": {"name": "fedavgm", "momentum": 1}}, {}, r"strategy.server.momentum must be in \[0, 1\)"),
    ({"client": {"name": "fedprox", "mu": -0.1}}, {}, r"strategy.client.mu must be >= 0"),
    ({"client": "scaffold"}, {"optimizer": "adamw"}, r"strategy.client.name scaffold needs train.optimizer: sgd"),
    ({"client": "scaffold", "aggregator": "median"}, {}, r"strategy.aggregator.name median would drop"),
    ({"aggregator": {"name": "trimmed_mean", "beta": 0.5}}, {}, r"strategy.aggregator.beta must be in \[0, 0.5\)"),
    ({"aggregator": {"name": "krum", "f": 2}}, {}, r"strategy.aggregator.f = 2 needs more than 2f \+ 2 = 6 clients "
                                                   r"per round but federation.clients_per_round is 6"),
    ({"aggregator": {"name": "multi_krum", "f": 1, "m": 6}}, {},
     r"strategy.aggregator.m \(6\) must be <= federation.clients_per_round − strategy.aggregator.f = 5"),
    ({"aggregator": {"name": "norm_clip", "clip": -1}}, {}, r"strategy.aggregator.clip must be > 0"),
    ({"privacy": {"name": "dp", "noise_multiplier": -1}}, {}, r"strategy.privacy.noise_multiplier must be >= 0"),
    ({"privacy": {"name": "dp", "delta": 0}}, {}, r"strategy.privacy.delta must be in \(0, 1\)"),
    ({"privacy": {"name": "dp", "delta": 1}}, {}, r"strategy.privacy.delta must be in \(0, 1\)"),
    ({"privacy": {"name": "dp", "noise": "both"}}, {}, r"unknown strategy.privacy.noise 'both'"),
    ({"privacy": "dp", "aggregator": {"name": "krum", "f": 1}}, {},
     r"strategy.aggregator.name krum cannot serve that: use strategy.aggregator.name mean"),
    ({"privacy": "dp"}, {"over_selection": 1.5}, r"federation.over_selection 1.5 keeps the fastest"),
    ({"privacy": {"name": "dp", "expected_clients": 30}}, {},
     r"strategy.privacy.expected_clients \(30\) > federation.num_clients \(20\)"),
    ({"privacy": "dp", "client": "scaffold"}, {}, r"strategy.client.name scaffold would upload its control"),
    ({"privacy": {"name": "dp", "adaptive": True, "noise": "local"}}, {},
     r"strategy.privacy.adaptive needs strategy.privacy.noise: central"),
    ({"privacy": {"name": "dp", "adaptive": True, "noise_multiplier": 0.6}}, {},
     r"strategy.privacy.noise_multiplier \(0.6\) must be < 2 × strategy.privacy.count_stddev \(0.3 = expected"),
])
def test_bad_input_names_the_keys(strategy, kw, match):
    with pytest.raises(ConfigError, match=match):
        cfg_of(strategy, **kw)


def test_what_is_allowed():
    cfg_of({"aggregator": {"name": "krum", "f": 1}}, clients_per_round=5)  # 5 > 2f + 2
    cfg_of({"privacy": {"name": "dp", "adaptive": True, "noise_multiplier": 0.6, "count_stddev": 1.0}})
    cfg_of({"client": "scaffold", "aggregator": {"name": "norm_clip"}})
