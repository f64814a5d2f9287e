"""FedProx: the gradient hook equals the gradient of μ/2·‖w − w_global‖², and 2 rounds match a reference."""
from __future__ import annotations

import pytest
import torch

from fedmpi.strategies.fedprox import FedProx, FedProxOptions
from regression_problem import client_data, flatten, model, params_of, reference_grad, train_locally, unflatten_into

MU, LR, STEPS = 0.5, 0.05, 4


def test_gradient_hook_is_the_proximal_term_gradient():
    m = model()
    params = params_of(m)
    glob = flatten(params).clone()
    with torch.no_grad():
        m.weight.add_(torch.tensor([[0.3, -0.2, 0.1]]))
        m.bias.add_(-0.4)
    x, y = (t.float() for t in client_data()[0])
    prox = FedProx(FedProxOptions(mu=MU))
    prox.begin(params, glob, None, None)
    # autograd of loss + penalty
    m.zero_grad()
    (((m(x).squeeze(1) - y) ** 2).mean() + prox.penalty(params)).backward()
    want = [p.grad.clone() for p in params]
    # the hook after the plain loss's backward
    m.zero_grad()
    ((m(x).squeeze(1) - y) ** 2).mean().backward()
    plain = [p.grad.clone() for p in params]
    prox.after_backward(params)
    for got, w in zip(params, want):
        assert torch.allclose(got.grad, w, atol=1e-6)
    # and by hand: μ·(w − w_global) = 0.5·(0.3, −0.2, 0.1, −0.4)
    extra = torch.cat([(p.grad - g).reshape(-1) for p, g in zip(params, plain)])
    assert extra.tolist() == pytest.approx([0.15, -0.1, 0.05, -0.2], abs=1e-6)
    assert float(prox.penalty(params).detach()) == pytest.approx(0.25 * (0.09 + 0.04 + 0.01 + 0.16), rel=1e-5)


def test_two_rounds_match_the_reference():
    data = client_data()
    sampled = [[0, 2], [1, 2, 3]]
    w = torch.tensor([0.1, 0.2, -0.1, 0.05], dtype=torch.float64)
    ref = []
    for clients in sampled:  # reference: y ← y − η(∇f_i(y) + μ(y − w))
        ys = []
        for i in clients:
            y = w.clone()
            for _ in range(STEPS):
                y = y - LR * (reference_grad(y, data[i]) + MU * (y - w))
            ys.append(y)
        w = torch.stack(ys).mean(0)
        ref.append(w.clone())
    m = model()
    params = params_of(m)
    prox = FedProx(FedProxOptions(mu=MU))
    for r, clients in enumerate(sampled):
        glob = flatten(params).clone()
        states = []
        for i in clients:
            unflatten_into(glob, params)
            prox.begin(params, glob, None, None)
            train_locally(m, data[i], STEPS, LR, prox)
            assert prox.end(params, None) is None  # nothing extra on the wire
            states.append(flatten(params).clone())
        unflatten_into(torch.stack(states).mean(0), params)
        assert flatten(params).double().tolist() == pytest.approx(ref[r].tolist(), abs=1e-5)
    assert FedProx.extra_kind is None
    # μ mattered: plain SGD from the same start lands elsewhere
    plain = torch.tensor([0.1, 0.2, -0.1, 0.05], dtype=torch.float64)
    for _ in range(STEPS):
        plain = plain - LR * reference_grad(plain, data[0])
    assert float((plain - ref[0]).abs().max()) > 1e-2


def test_mu_zero_leaves_gradients_alone():
    w = torch.ones(2, requires_grad=True)
    prox = FedProx(FedProxOptions(mu=0.0))
    prox.begin([w], torch.zeros(2), None, None)
    w.grad = torch.tensor([1.0, 2.0])
    prox.after_backward([w])
    assert w.grad.tolist() == [1.0, 2.0]
