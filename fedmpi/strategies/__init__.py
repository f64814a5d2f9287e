"""Strategies: how client updates become the next global state, in four parts.

- server (base.py, fedavgm.py, adaptive.py): the optimiser applied to the
  aggregate, Δ = mean − global as a pseudo-gradient;
- client (client.py, fedprox.py, scaffold.py): hooks around local training,
  and SCAFFOLD's extra vector each way (ledger kind `control`);
- aggregator (robust.py, median.py, trimmed_mean.py, krum.py, norm_clip.py):
  how the arrived deltas are combined;
- privacy (dp.py, adaptive_clip.py, accounting.py): DP-FedAvg and its ε.

Each part is a registry (fedmpi/registry.py) and a `strategy.<part>` config
section (fedmpi/config.py StrategyConfig, with the checks across sections). The order
of operations a round keeps is pipeline.py:

    clip -> encode/decode (+ error feedback) -> bound -> aggregate -> noise -> server optimiser
"""
