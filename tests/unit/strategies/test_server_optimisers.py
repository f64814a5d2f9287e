"""Server optimisers (fedavgm.py, adaptive.py): one step against hand arithmetic, and exact resume."""
from __future__ import annotations

import math

import pytest
import torch

from fedmpi.registry import SERVER_STRATEGIES
from fedmpi.strategies.adaptive import AdagradOptions, AdamOptions, FedAdagrad, FedAdam, FedYogi, YogiOptions
from fedmpi.strategies.base import ServerStrategy
from fedmpi.strategies.fedavgm import FedAvgM, FedAvgMOptions


def params_of(*values: float) -> list[torch.Tensor]:
    """Two tensors (a 1-vector and a 2-vector), so flattening across params is exercised."""
    return [torch.tensor([values[0]]), torch.tensor(list(values[1:]))]


def flat(params: list[torch.Tensor]) -> list[float]:
    return torch.cat([p.reshape(-1) for p in params]).tolist()


def test_fedavg_takes_the_mean():
    p = params_of(1.0, 2.0, 3.0)
    ServerStrategy().apply(p, torch.tensor([4.0, 5.0, 6.0], dtype=torch.float64), 0)
    assert flat(p) == [4.0, 5.0, 6.0]


def test_fedavgm_two_steps_by_hand():
    # Δ1 = mean − x = (0.5, −1, 2);  v = Δ1;  x = x + 0.5·v
    s = FedAvgM(FedAvgMOptions(lr=0.5, momentum=0.9))
    p = params_of(1.0, 2.0, 3.0)
    s.apply(p, torch.tensor([1.5, 1.0, 5.0]), 0)
    assert flat(p) == pytest.approx([1.25, 1.5, 4.0])
    # x = (1.25, 1.5, 4), mean (2.25, 1.5, 4): Δ2 = (1, 0, 0);
    # v = 0.9·(0.5, −1, 2) + (1, 0, 0) = (1.45, −0.9, 1.8); x += 0.5·v
    s.apply(p, torch.tensor([2.25, 1.5, 4.0]), 1)
    assert flat(p) == pytest.approx([1.25 + 0.725, 1.5 - 0.45, 4.0 + 0.9])


def test_fedavgm_without_momentum_at_unit_lr_is_fedavg():
    p = params_of(1.0, 2.0, 3.0)
    FedAvgM(FedAvgMOptions(lr=1.0, momentum=0.0)).apply(p, torch.tensor([0.25, -2.0, 8.0]), 0)
    assert flat(p) == [0.25, -2.0, 8.0]


# x = (1, 2, 3), mean = (1.5, 1, 3): Δ = (0.5, −1, 0); η = 0.1, β1 = 0.9, β2 = 0.99, τ = 0.01, v0 = τ² = 1e-4
X, MEAN, LR, B1, B2, TAU = [1.0, 2.0, 3.0], [1.5, 1.0, 3.0], 0.1, 0.9, 0.99, 0.01


def step(m: float, v: float) -> float:
    return LR * m / (math.sqrt(v) + TAU)


@pytest.mark.parametrize("cls, opts, v_of", [
    (FedAdam, AdamOptions(lr=LR, beta1=B1, beta2=B2, tau=TAU), lambda d: B2 * 1e-4 + (1 - B2) * d * d),
    # Yogi: v − (1−β2)·Δ²·sign(v − Δ²); v0 = 1e-4 < Δ² for Δ ≠ 0, so v = 1e-4 + 0.01·Δ²
    (FedYogi, YogiOptions(lr=LR, beta1=B1, beta2=B2, tau=TAU), lambda d: 1e-4 + (1 - B2) * d * d if d else 1e-4),
    (FedAdagrad, AdagradOptions(lr=LR, beta1=B1, tau=TAU), lambda d: 1e-4 + d * d),
])
def test_adaptive_first_step_by_hand(cls, opts, v_of):
    p = params_of(*X)
    cls(opts).apply(p, torch.tensor(MEAN, dtype=torch.float64), 0)
    expected = [x + step((1 - B1) * (m - x), v_of(m - x)) for x, m in zip(X, MEAN)]
    assert flat(p) == pytest.approx(expected, rel=1e-6, abs=1e-7)
    # and the first coordinate written out: m = 0.05, v(Adam) = 0.002599, step = 0.1·0.05/(0.050980 + 0.01)
    if cls is FedAdam:
        assert flat(p)[0] == pytest.approx(1.0 + 0.005 / (math.sqrt(0.002599) + 0.01), rel=1e-6)
        assert flat(p)[0] == pytest.approx(1.0819938, abs=1e-6)


def test_yogi_shrinks_v_where_adam_would_not():
    # after a large first Δ, a small second Δ: Yogi adds (1−β2)Δ² (sign(v − Δ²) = +1 -> v decreases
    # by (1−β2)Δ²), Adam decays v by β2 and adds (1−β2)Δ²
    y, a = FedYogi(YogiOptions(lr=LR, beta1=B1, beta2=B2, tau=TAU)), FedAdam(AdamOptions(lr=LR, beta1=B1, beta2=B2,
                                                                                         tau=TAU))
    for s in (y, a):
        p = [torch.tensor([0.0])]
        s.apply(p, torch.tensor([1.0]), 0)  # Δ = 1
        s.apply(p, p[0] + 0.1, 1)  # Δ = 0.1
    v1 = 1e-4 + 0.01 * 1.0
    assert float(y.moments.buffers["v"]) == pytest.approx(v1 - 0.01 * 0.01, rel=1e-5)
    assert float(a.moments.buffers["v"]) == pytest.approx(B2 * (B2 * 1e-4 + 0.01) + 0.01 * 0.01, rel=1e-5)


def test_bias_correction_scales_the_first_step():
    o = AdamOptions(lr=LR, beta1=B1, beta2=B2, tau=TAU, bias_correction=True)
    p = params_of(*X)
    FedAdam(o).apply(p, torch.tensor(MEAN), 0)
    lr = LR * math.sqrt(1 - B2) / (1 - B1)
    assert flat(p)[0] == pytest.approx(1.0 + lr * 0.05 / (math.sqrt(0.002599) + TAU), rel=1e-6)


@pytest.mark.parametrize("name", SERVER_STRATEGIES.names())
def test_resume_is_bitwise_exact(name):
    cls = SERVER_STRATEGIES.get(name)
    g = torch.Generator().manual_seed(0)
    means = [torch.randn(5, generator=g, dtype=torch.float64) for _ in range(4)]
    straight, p1 = cls(), [torch.zeros(2), torch.zeros(3)]
    for r, m in enumerate(means):
        straight.apply(p1, m, r)
    first, p2 = cls(), [torch.zeros(2), torch.zeros(3)]
    for r, m in enumerate(means[:2]):
        first.apply(p2, m, r)
    saved = {k: v.clone() for k, v in first.state_dict().items()}
    resumed = cls()
    resumed.load_state_dict(saved)
    for r, m in enumerate(means[2:], start=2):
        resumed.apply(p2, m, r)
    assert all(torch.equal(a, b) for a, b in zip(p1, p2))
    moments = {k: v for k, v in resumed.state_dict().items() if k != "steps"}
    assert all(v.dtype == torch.float32 for v in moments.values())  # float32 moments (adaptive.py says why)
    assert len(moments) == {"fedavg": 0, "fedavgm": 1}.get(name, 2)
