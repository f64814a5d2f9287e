"""SCAFFOLD (Karimireddy et al., ICML 2020), option II control variates.

Server: global x and control variate c (zeros at first). Client i, sampled:

    y ← x;  K local steps  y ← y − η·(g(y) + c − c_i)          (after_backward adds c − c_i)
    c_i⁺ = c_i − c + (x − y)/(K·η)                             (option II; K = steps taken)
    upload y (the engine's usual update) and Δc_i = c_i⁺ − c_i  (kind "control")
Server:  x as usual (the strategy on the mean of the y's);  c ← c + (|S|/N)·mean_S(Δc_i)

c goes down to every sampled client and Δc_i comes up, so SCAFFOLD doubles
the traffic each way; both ride as ledger kind `control`. c_i lives in the
client's per-client state (key `scaffold.c`, float32 of the trainable size:
the server's store holds N × d × 4 bytes, spilling beyond state.memory_mb).

Option II's (x − y)/(K·η) is the average corrected step of plain SGD, so the
client optimizer must be SGD (check refuses AdamW); SGD weight decay is part
of the local gradient and lands in c_i too. x − y is taken in float64: the
two float32 states are close, and dividing their float32 difference by K·η
would magnify its rounding.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from fedmpi.errors import ConfigError
from fedmpi.net.flat import flatten
from fedmpi.options import option
from fedmpi.strategies.client import ClientOptions, ClientStrategy, add_to_grad, views

CONTROL = "control"  # ledger kind of c (down) and Δc_i (up)
KEY = "scaffold.c"  # the client's variate in its per-client state


@dataclass
class ScaffoldOptions(ClientOptions):
    name: str = option("scaffold")


class Scaffold(ClientStrategy):
    name = "scaffold"
    Options = ScaffoldOptions
    uses_client_state = True
    extra_kind = CONTROL

    def __init__(self, options: Any = None, **kw: Any) -> None:
        super().__init__(options, **kw)
        self.c: torch.Tensor | None = None  # server variate (server only)
        self._x: torch.Tensor | None = None  # this client's starting global state
        self._c: torch.Tensor | None = None  # the server variate as this client received it
        self._ci: torch.Tensor | None = None
        self._correction: list[torch.Tensor] = []  # c − c_i, per parameter
        self.steps = 0  # K

    @classmethod
    def check(cls, cfg: Any) -> None:
        if cfg.train.optimizer != "sgd":
            raise ConfigError(f"strategy.client.name scaffold needs train.optimizer: sgd (its option-II "
                              f"variate (x − y)/(K·η) assumes plain SGD steps), got '{cfg.train.optimizer}'")

    def setup(self, params: list[torch.Tensor]) -> None:
        if self.c is None:
            self.c = torch.zeros(sum(p.numel() for p in params), dtype=torch.float32, device=params[0].device)

    # -- client side ----------------------------------------------------------
    def begin(self, params, glob, state, payload) -> None:
        if payload is None:
            raise RuntimeError("scaffold: the server variate c did not come down with the global state")
        self._x = glob.detach().clone()
        stored = None if state is None else state.get(KEY)
        self._ci = (torch.zeros_like(payload, dtype=torch.float32) if stored is None
                    else stored.to(payload.device, torch.float32))
        self._c = payload.to(torch.float32)
        self._correction = views(self._c - self._ci, params)
        self.steps = 0

    def after_backward(self, params: list[torch.Tensor]) -> None:
        with torch.no_grad():
            for p, corr in zip(params, self._correction):
                add_to_grad(p, corr)
        self.steps += 1

    def end(self, params: list[torch.Tensor], state: dict[str, torch.Tensor] | None) -> torch.Tensor:
        if self.steps == 0:  # no local step: the variate cannot be estimated; keep it
            return torch.zeros_like(self._ci)
        y = flatten(params)
        ci_new = (self._ci.double() - self._c.double()
                  + (self._x.double() - y.double()) / (self.steps * self.lr)).to(torch.float32)
        delta = ci_new - self._ci
        if state is not None:
            state[KEY] = ci_new
        self._x = self._c = self._ci = None
        self._correction = []
        return delta

    # -- server side ----------------------------------------------------------
    def extra_download(self) -> torch.Tensor:
        if self.c is None:
            raise RuntimeError("scaffold: setup(params) must run before the first round")
        return self.c

    def absorb(self, mean_extra: torch.Tensor | None, arrived: int) -> None:
        if mean_extra is None or arrived <= 0:
            return
        self.c.add_(mean_extra.to(self.c.device, self.c.dtype), alpha=arrived / self.num_clients)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {} if self.c is None else {"c": self.c.detach().to("cpu", copy=True)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if "c" in state:
            device = self.c.device if self.c is not None else "cpu"
            self.c = state["c"].to(device, copy=True)

    def flops_per_step(self, numel: int) -> int:
        return numel
