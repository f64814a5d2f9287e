"""A tiny least-squares federation for client-strategy tests (no MPI).

Four clients, each with its own (X_i, y_i); the model is a torch Linear(3, 1)
trained with full-batch SGD, the hooks called exactly where the engine calls
them (after backward, before step). The reference side never uses autograd:
the gradient of mean((X̃w − y)²) is 2/B·X̃ᵀ(X̃w − y) with X̃ = [X, 1].
"""
from __future__ import annotations

import torch
from torch import nn

from fedmpi.net.flat import flatten, unflatten_into

N_CLIENTS, BATCH, DIM = 4, 8, 3


def client_data(seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(N_CLIENTS):  # heterogeneous: a different true w per client
        x = torch.randn(BATCH, DIM, generator=g, dtype=torch.float64)
        w = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64) + i * torch.tensor([0.5, 0.3, -0.4],
                                                                                     dtype=torch.float64)
        out.append((x, x @ w + 0.3 * i))
    return out


def model() -> nn.Linear:
    torch.manual_seed(0)
    m = nn.Linear(DIM, 1)
    with torch.no_grad():
        m.weight.copy_(torch.tensor([[0.1, 0.2, -0.1]]))
        m.bias.fill_(0.05)
    return m


def params_of(m: nn.Linear) -> list[torch.Tensor]:
    return [m.weight, m.bias]


def train_locally(m: nn.Linear, data: tuple[torch.Tensor, torch.Tensor], steps: int, lr: float, strategy) -> None:
    """What engine/training.py's loop does, with the strategy's gradient hook."""
    x, y = (t.to(torch.float32) for t in data)
    params = params_of(m)
    opt = torch.optim.SGD(params, lr=lr)
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = ((m(x).squeeze(1) - y) ** 2).mean()
        loss.backward()
        strategy.after_backward(params)
        opt.step()


def reference_grad(w: torch.Tensor, data: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Gradient of mean((X̃w − y)²) at w = (weight..., bias), float64, by hand."""
    x, y = data
    xt = torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype)], 1)
    return 2.0 / x.shape[0] * xt.T @ (xt @ w - y)


__all__ = ["N_CLIENTS", "client_data", "model", "params_of", "train_locally", "reference_grad", "flatten",
           "unflatten_into"]
