"""The client-strategy seam: hooks around one client's local training.

FedProx and SCAFFOLD change what a client does between loading the global
state and uploading its own, and SCAFFOLD adds a second vector each way. The
engine calls, in this order (names as in engine/loop.py):

    server, before the download   payload = cs.extra_download()        -> broadcast, kind cs.extra_kind
    client's rank, per client     unflatten_into(glob, params)
                                  cs.begin(params, glob, state, payload) state = ctx.state.of(client)
                                  algo.train_client(...): after every loss.backward() and before
                                      optimizer.step(), cs.after_backward(params)
                                  extra = cs.end(params, state)        -> upload, kind cs.extra_kind,
                                                                          weight 1 (unweighted mean)
    server, after aggregation     cs.absorb(mean_extra, arrived)

`state` is the client's per-client state dict (fedmpi/state/store.py): what
the hooks leave in it goes back to the server's store after the round.
Hooks run on the rank hosting the client and never communicate, so results
do not depend on how clients are packed into ranks.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from fedmpi.options import option


@dataclass
class ClientOptions:
    """`strategy.client`: every client strategy's options start with its name."""
    name: str = option("none", help="hooks around local training (see CLIENT_STRATEGIES)")


def views(flat: torch.Tensor, like: list[torch.Tensor]) -> list[torch.Tensor]:
    """Per-parameter views of a flat buffer, shaped like `like` (no copy)."""
    out, offset = [], 0
    for t in like:
        out.append(flat[offset:offset + t.numel()].view(t.shape))
        offset += t.numel()
    return out


def add_to_grad(p: torch.Tensor, term: torch.Tensor) -> None:
    """p.grad += term; a parameter the loss did not reach gets `term` as its gradient."""
    if p.grad is None:
        p.grad = term.detach().to(p.dtype).clone()
    else:
        p.grad.add_(term)


class ClientStrategy:
    """`none`: plain local training, nothing extra on the wire."""
    name: ClassVar[str] = "none"
    Options: ClassVar[type] = ClientOptions
    uses_client_state: ClassVar[bool] = False  # the engine ships per-client state when True
    extra_kind: ClassVar[str | None] = None  # ledger kind of the extra download/upload, None: nothing extra

    def __init__(self, options: Any = None, *, num_clients: int = 1, lr: float = 1.0) -> None:
        self.options = options if options is not None else self.Options()
        self.num_clients = num_clients  # N, for SCAFFOLD's server variate
        self.lr = lr  # the client learning rate η (train.lr)

    @classmethod
    def from_config(cls, cfg: Any) -> "ClientStrategy":
        return cls(cfg.strategy.client, num_clients=cfg.federation.num_clients, lr=cfg.train.lr)

    @classmethod
    def check(cls, cfg: Any) -> None:
        """Refuse what the options alone cannot see (e.g. the client optimizer), as a ConfigError."""

    # -- every rank, once ---------------------------------------------------
    def setup(self, params: list[torch.Tensor]) -> None:
        """After the algorithm's setup: the travelling params are known."""

    # -- client side ----------------------------------------------------------
    def begin(self, params: list[torch.Tensor], glob: torch.Tensor, state: dict[str, torch.Tensor] | None,
              payload: torch.Tensor | None) -> None:
        """The global state `glob` (flat, as decoded) is loaded into `params`; `payload`
        is the decoded extra download (None when `extra_kind` is None)."""

    def after_backward(self, params: list[torch.Tensor]) -> None:
        """Between loss.backward() and optimizer.step(): adjust the gradients in place."""

    def end(self, params: list[torch.Tensor], state: dict[str, torch.Tensor] | None) -> torch.Tensor | None:
        """After local training: update `state`, return the extra upload (flat) or None."""
        return None

    # -- server side ----------------------------------------------------------
    def extra_download(self) -> torch.Tensor | None:
        """What goes down to every sampled client beside the global state."""
        return None

    def absorb(self, mean_extra: torch.Tensor | None, arrived: int) -> None:
        """The unweighted mean of the arrived clients' extra uploads, and how many arrived."""

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Server state for resume (SCAFFOLD's c)."""

    def flops_per_step(self, numel: int) -> int:
        """Extra client FLOPs of one `after_backward` (charged with the local compute)."""
        return 0
