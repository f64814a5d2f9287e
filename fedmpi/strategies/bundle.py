"""The four strategy parts of one run, built from the config's `strategy` section."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from fedmpi.registry import AGGREGATORS, CLIENT_STRATEGIES, PRIVACY, SERVER_STRATEGIES
from fedmpi.strategies.base import ServerStrategy
from fedmpi.strategies.client import ClientStrategy
from fedmpi.strategies.robust import RobustAggregator


@dataclass
class Strategies:
    server: ServerStrategy
    client: ClientStrategy
    aggregator: RobustAggregator
    privacy: Any  # NoPrivacy | DPFedAvg

    @classmethod
    def from_config(cls, cfg: Any) -> "Strategies":
        s = cfg.strategy
        privacy = PRIVACY.get(s.privacy.name)
        return cls(SERVER_STRATEGIES.get(s.server.name)(s.server),
                   CLIENT_STRATEGIES.get(s.client.name).from_config(cfg),
                   AGGREGATORS.get(s.aggregator.name)(s.aggregator),
                   privacy.from_config(cfg) if hasattr(privacy, "from_config") else privacy(s.privacy))

    @classmethod
    def default(cls) -> "Strategies":
        from fedmpi.strategies.dp import NoPrivacy

        return cls(ServerStrategy(), ClientStrategy(), RobustAggregator(), NoPrivacy())

    @property
    def uses_client_state(self) -> bool:
        return bool(self.client.uses_client_state)

    @property
    def dp(self) -> Any:
        """The DP mechanism, or None."""
        return self.privacy if getattr(self.privacy, "name", "none") == "dp" else None

    def state_dict(self) -> dict[str, dict[str, torch.Tensor]]:
        parts = {"server": self.server.state_dict(), "client": self.client.state_dict()}
        if self.dp is not None:
            parts["privacy"] = self.dp.state_dict()
        return {k: v for k, v in parts.items() if v}

    def load_state_dict(self, state: dict[str, dict[str, torch.Tensor]]) -> None:
        self.server.load_state_dict(state.get("server", {}))
        self.client.load_state_dict(state.get("client", {}))
        if self.dp is not None:
            self.dp.load_state_dict(state.get("privacy", {}))
