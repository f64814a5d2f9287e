"""Federated algorithms, looked up by the config's `algorithm` name."""
from __future__ import annotations

import importlib

from fedmpi.config import ConfigError

# name -> "module:Class"; modules are imported only when chosen.
REGISTRY = {
    "fedavg": "fedmpi.algorithms.fedavg:FedAvg",
    "splitfed": "fedmpi.algorithms.splitfed:SplitFed",
    "sfprompt": "fedmpi.algorithms.sfprompt:SFPrompt",
    "fedpft": "fedmpi.algorithms.fedpft:FedPFT",
}


def get_algorithm(name: str):
    if name not in REGISTRY:
        raise ConfigError(f"unknown algorithm '{name}'; choose one of: {', '.join(REGISTRY)}")
    module, cls = REGISTRY[name].split(":")
    try:
        return getattr(importlib.import_module(module), cls)
    except ModuleNotFoundError as exc:
        if exc.name == module:
            raise ConfigError(f"algorithm '{name}' is not implemented in this version") from None
        raise
