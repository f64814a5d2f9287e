"""Client training memory: exact bytes for a known step, measured once per key,
and the cap that refuses a run whose clients cannot train."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from fedmpi.errors import ConfigError
from fedmpi.metering.client_memory import ClientMemory, ClientMemoryMeter, enforce_cap, over_cap

F32 = 4


def step(model, opt, x):
    opt.zero_grad(set_to_none=True)
    model(x).sum().backward()
    opt.step()


def test_adamw_step_on_a_two_layer_net():
    """weights: every parameter the step reads; gradients: the trainable ones; AdamW:
    two moments per trainable value + a 4-byte step counter per tensor; activations:
    what autograd saves (the input of the trained layer, the ReLU output)."""
    torch.manual_seed(0)
    frozen, trained = nn.Linear(16, 32), nn.Linear(32, 8)
    for p in frozen.parameters():
        p.requires_grad_(False)
    model = nn.Sequential(frozen, nn.ReLU(), trained)
    opt = torch.optim.AdamW(trained.parameters(), lr=1e-3)
    meter = ClientMemoryMeter()
    x = torch.randn(5, 16)
    with meter.measure("k", model, opt):
        step(model, opt, x)
    m = meter.heaviest
    n_frozen, n_trained = 16 * 32 + 32, 32 * 8 + 8
    assert m.weights == (n_frozen + n_trained) * F32
    assert m.gradients == n_trained * F32
    assert m.optimizer == 2 * n_trained * F32 + 2 * F32
    # relu saves its output (5 x 32) for its backward, and the trained linear its input: one storage
    assert m.activations == 5 * 32 * F32
    assert m.total == m.weights + m.gradients + m.optimizer + m.activations


def test_measured_once_per_key_and_the_heaviest_kept():
    model = nn.Linear(8, 8)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    meter = ClientMemoryMeter()
    for rows in (4, 16, 4):
        with meter.measure(("train", rows), model, opt):
            step(model, opt, torch.randn(rows, 8))
    assert meter.heaviest.key == str(("train", 16)) and meter.heaviest.optimizer == 0  # SGD keeps no state
    assert meter.heaviest.activations == 16 * 8 * F32
    assert len(meter._done) == 2


def test_a_step_no_longer_than_one_measured_is_skipped_and_the_heaviest_is_the_same():
    """With sequence lengths given, shorter steps of a measured family are not measured
    again (memory grows with the length), and the heaviest equals measuring every step."""
    def heaviest(with_length: bool):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
        opt = torch.optim.AdamW(model.parameters(), lr=0.1)
        meter = ClientMemoryMeter()
        measured = []
        for n in (12, 5, 30, 17, 30, 3, 31):
            key = ("train", n)
            before = meter.heaviest
            with meter.measure(key, model, opt, length=("fam", n) if with_length else None):
                step(model, opt, torch.randn(4 * n, 8))
            measured.append(meter.heaviest is not before)
        return meter.heaviest, measured

    every, _ = heaviest(False)
    skipping, measured = heaviest(True)
    assert skipping == every and every.activations > 0
    assert measured == [True, False, True, False, False, False, True]  # 12, 30, 31: each longer than before


def test_a_need_over_the_cap_refuses_the_run_on_every_rank():
    need = ClientMemory(weights=3 * 2**20, gradients=2**20, optimizer=2 * 2**20, activations=2**20, key="k")
    assert over_cap(need, 8) is None and over_cap(need, None) is None
    assert "7.0 MB" in over_cap(need, 6.5) and "compute.client_memory_mb is 6.5" in over_cap(need, 6.5)
    meter = ClientMemoryMeter()
    meter.heaviest = need
    link = SimpleNamespace(gather=lambda obj: [None, obj], share=lambda obj: obj)
    with pytest.raises(ConfigError, match="no client of this device profile can take part"):
        enforce_cap(link, meter, 6.5)
    enforce_cap(link, meter, 8)  # within the cap: nothing happens
