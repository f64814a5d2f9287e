"""The client optimizer: multi-tensor (foreach) on every device, bitwise the same
steps as torch's single-tensor loop (the default on CPU), so results do not change."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from fedmpi.engine.training import make_optimizer

SHAPES = [(300, 8), (8,), (16, 8), (16,), (2, 16), (2,)]  # embedding-like, with rows that get no gradient


def steps(opt_of, wd: float) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s, generator=g)) for s in SHAPES]
    opt = opt_of(params, wd)
    for _ in range(4):
        for p in params:
            p.grad = torch.randn(p.shape, generator=g) * (torch.rand(p.shape, generator=g) > 0.5)
        opt.step()
    return [p.detach() for p in params]


@pytest.mark.parametrize("name,wd", [("adamw", 0.0), ("adamw", 0.01), ("sgd", 0.0), ("sgd", 0.05)])
def test_foreach_steps_equal_the_single_tensor_loop(name, wd):
    cfg = lambda w: SimpleNamespace(optimizer=name, lr=0.003, weight_decay=w)  # noqa: E731
    ours = steps(lambda ps, w: make_optimizer(ps, cfg(w)), wd)
    assert make_optimizer([torch.nn.Parameter(torch.zeros(1))], cfg(wd)).defaults["foreach"] is True
    cls = torch.optim.SGD if name == "sgd" else torch.optim.AdamW
    loop = steps(lambda ps, w: cls(ps, lr=0.003, weight_decay=w, foreach=False), wd)
    assert all(torch.equal(a, b) for a, b in zip(ours, loop))
