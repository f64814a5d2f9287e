"""The strategy seam: what the server does with the round's aggregate.

The engine hands the server strategy the global `params` and the
sample-weighted mean of the arrived clients' states (as the server decoded
them); FedAvg takes the mean as the new global state. Server optimisers,
robust aggregators and DP plug in here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from fedmpi.net.flat import unflatten_into
from fedmpi.options import option


@dataclass
class ServerOptions:
    name: str = option("fedavg")


class ServerStrategy:
    """FedAvg: the mean of the arrived clients' states is the next global state."""
    name: ClassVar[str] = "fedavg"
    Options: ClassVar[type] = ServerOptions

    def __init__(self, options: Any = None) -> None:
        self.options = options

    def apply(self, params: list[torch.Tensor], mean: torch.Tensor, rnd: int) -> None:
        """Write the next global state into `params` (server only)."""
        unflatten_into(mean, params)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore what `state_dict` saved (momentum, moments, ...)."""
