"""The algorithm contract: the few hooks that make a federated algorithm different.

The engine (engine/loop.py) runs every round: it samples clients, sends the
global state (`params`) down through the codec, loads it into the model on
each client's rank, calls `train_client`, encodes the update, aggregates it,
applies the result through the server strategy, evaluates `eval_model()` and
runs the callbacks (metrics, checkpoint, tracker, progress). An algorithm
supplies only what is distinctive:

- `setup`: pick the model that trains and its travelling `params` (collective);
- `train_client`: one client's local work from the global state now loaded;
- `serve`: the server's own work while clients train (split learning);
- `before_round` / `after_round`: collective extras (FedPFT's alignment);
- `state_dict` / `load_state_dict`: server state beyond `params`, for resume.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from fedmpi.engine.training import LocalStats
from fedmpi.models.methods import trainable
from fedmpi.options import NoOptions

if TYPE_CHECKING:
    from fedmpi.engine.context import Context


class Algorithm:
    name: ClassVar[str] = "algorithm"
    Options: ClassVar[type] = NoOptions
    model_kind: ClassVar[str] = "model"  # ledger kind of the global state going down
    update_kind: ClassVar[str] = "update"  # and of each client's state coming up
    uses_client_state: ClassVar[bool] = False  # ask the engine to ship per-client state
    builds_own_method: ClassVar[bool] = False  # True: the method is not applied to the model beforehand
    trains_with_hooks: ClassVar[bool] = True  # local training goes through ctx.train (client strategies apply)

    def __init__(self, ctx: "Context") -> None:
        self.ctx = ctx
        self.opts = ctx.cfg.options
        self.model: nn.Module = ctx.model
        self.params: list[torch.Tensor] = []

    @classmethod
    def check(cls, cfg: Any) -> None:
        """Refuse bad options with a ConfigError, from the config alone: called by
        the launcher and by every rank before the process group exists."""

    @classmethod
    def check_model(cls, cfg: Any, model: nn.Module) -> None:
        """Refuse a model the algorithm cannot serve (split points, layers), before any rank starts."""

    # -- hooks ------------------------------------------------------------------
    def setup(self) -> None:
        """One-off work before round 0 (collective). Default: the model's trainable parameters travel."""
        self.params = [p for _, p in trainable(self.model)]

    def before_round(self, rnd: int, sampled: list[int]) -> None:
        """Collective, before the global state goes down."""

    def train_client(self, client: int, rnd: int) -> LocalStats:
        """On the client's rank, with the global state loaded into `params`."""
        raise NotImplementedError

    def serve(self, rnd: int, live: list[int]) -> None:
        """Server, while the clients train: its share of split learning."""

    def after_round(self, rnd: int, sampled: list[int]) -> None:
        """Collective, after the new global state is in place on the server."""

    def eval_model(self) -> nn.Module:
        """The global model the server evaluates."""
        return self.model

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Server state beyond `params` that a resumed run needs."""
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Server only, after `setup`, with what `state_dict` saved."""

    def report(self) -> dict[str, object]:
        """Extra summary fields (parameter counts, bytes per client, ...)."""
        return {}
