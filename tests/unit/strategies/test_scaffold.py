"""SCAFFOLD (option II) in process for 3 rounds against a hand-written float64 reference."""
from __future__ import annotations

import pytest
import torch

from fedmpi.errors import ConfigError
from fedmpi.strategies.scaffold import CONTROL, KEY, Scaffold
from regression_problem import N_CLIENTS, client_data, flatten, model, params_of, reference_grad, train_locally, \
    unflatten_into

LR, STEPS = 0.05, 3
ROUNDS = [[0, 1, 2], [1, 3], [0, 2, 3]]  # sampled (= arrived) clients of each round; |S| varies


def reference(data):
    """SCAFFOLD by the paper's formulas, float64, analytic gradients."""
    x = torch.tensor([0.1, 0.2, -0.1, 0.05], dtype=torch.float64)
    c = torch.zeros(4, dtype=torch.float64)
    ci = {i: torch.zeros(4, dtype=torch.float64) for i in range(N_CLIENTS)}
    history = []
    for sampled in ROUNDS:
        ys, dcs, grads = [], [], {}
        for i in sampled:
            y, seen = x.clone(), []
            for _ in range(STEPS):
                g = reference_grad(y, data[i])
                seen.append(g)
                y = y - LR * (g + c - ci[i])
            new = ci[i] - c + (x - y) / (STEPS * LR)
            grads[i] = torch.stack(seen).mean(0)  # option II's identity for plain SGD: c_i⁺ = mean gradient
            dcs.append(new - ci[i])
            ci[i] = new
            ys.append(y)
        x = torch.stack(ys).mean(0)  # equal dataset sizes: FedAvg's weighted mean is the plain mean
        c = c + len(sampled) / N_CLIENTS * torch.stack(dcs).mean(0)
        history.append((x.clone(), c.clone(), {i: ci[i].clone() for i in sampled}, grads))
    return history


def test_scaffold_matches_the_reference_for_three_rounds():
    data = client_data()
    ref = reference(data)
    m = model()
    params = params_of(m)
    server = Scaffold(num_clients=N_CLIENTS, lr=LR)  # the server's instance
    client = Scaffold(num_clients=N_CLIENTS, lr=LR)  # a client rank's instance
    server.setup(params)
    client.setup(params)
    store: dict[int, dict[str, torch.Tensor]] = {}
    for r, sampled in enumerate(ROUNDS):
        glob = flatten(params).clone()
        payload = server.extra_download().clone()  # goes down as kind "control"
        states, extras = [], []
        for i in sampled:
            state = dict(store.get(i, {}))  # shipped to the client's rank and back
            unflatten_into(glob, params)
            client.begin(params, glob, state, payload)
            train_locally(m, data[i], STEPS, LR, client)
            extras.append(client.end(params, state))
            assert client.steps == STEPS  # K: one per after_backward call
            states.append(flatten(params).clone())
            store[i] = state
        unflatten_into(torch.stack(states).mean(0), params)  # FedAvg on x
        server.absorb(torch.stack(extras).mean(0), arrived=len(sampled))
        x_ref, c_ref, ci_ref, grads = ref[r]
        assert flatten(params).double().tolist() == pytest.approx(x_ref.tolist(), abs=2e-5)
        assert server.c.double().tolist() == pytest.approx(c_ref.tolist(), abs=2e-5)
        for i in sampled:
            assert store[i][KEY].dtype == torch.float32
            assert store[i][KEY].double().tolist() == pytest.approx(ci_ref[i].tolist(), abs=2e-5)
            assert store[i][KEY].double().tolist() == pytest.approx(grads[i].tolist(), abs=5e-5)
    assert float(server.c.abs().sum()) > 0.1  # the variates really moved


def test_variate_update_on_one_step_by_hand():
    # x = 0 (1 coordinate), c = 0.5, c_i = 0.2, η = 0.1: after_backward turns g into g + 0.3;
    # with g = 1 one SGD step gives y = −0.13, so c_i⁺ = 0.2 − 0.5 + 0.13/0.1 = 1.0 = g; Δc = 0.8
    s = Scaffold(num_clients=10, lr=0.1)
    w = torch.zeros(1, requires_grad=True)
    state = {KEY: torch.tensor([0.2])}
    s.begin([w], torch.zeros(1), state, torch.tensor([0.5]))
    w.grad = torch.ones(1)
    s.after_backward([w])
    assert w.grad.tolist() == pytest.approx([1.3])
    with torch.no_grad():
        w -= 0.1 * w.grad
    dc = s.end([w], state)
    assert state[KEY].tolist() == pytest.approx([1.0], abs=1e-6)
    assert dc.tolist() == pytest.approx([0.8], abs=1e-6)
    s.setup([w])
    s.absorb(dc, arrived=4)  # c += |S|/N · mean(Δc) = 0.4 · 0.8
    assert s.c.tolist() == pytest.approx([0.32])


def test_server_variate_resumes_and_kinds():
    s = Scaffold(num_clients=4, lr=0.1)
    s.setup([torch.zeros(3)])
    s.absorb(torch.tensor([1.0, 2.0, 3.0]), arrived=2)
    t = Scaffold(num_clients=4, lr=0.1)
    t.setup([torch.zeros(3)])
    t.load_state_dict(s.state_dict())
    assert torch.equal(t.c, s.c) and t.c.tolist() == [0.5, 1.0, 1.5]
    assert Scaffold.extra_kind == CONTROL == "control" and Scaffold.uses_client_state


def test_scaffold_refuses_adamw():
    from types import SimpleNamespace
    with pytest.raises(ConfigError, match="train.optimizer: sgd"):
        Scaffold.check(SimpleNamespace(train=SimpleNamespace(optimizer="adamw")))
