"""FLOP meter: exact for known layers, attention counted in train and eval, cached."""
from __future__ import annotations

import torch
from torch import nn

from fedmpi.config import ModelConfig
from fedmpi.metering.flops import FlopMeter, shape_key
from fedmpi.models.backbone import build_model


def test_linear_forward_backward_is_six_flops_per_weight_per_sample():
    layer = nn.Linear(64, 32, bias=False)
    x = torch.randn(8, 64, requires_grad=False)
    meter = FlopMeter()

    def step():
        layer(x).sum().backward()

    _, flops = meter.run(("lin", shape_key(x)), step)
    # forward 2*B*in*out, backward (weight grad only: input needs no grad) 2*B*in*out
    assert flops == 4 * 8 * 64 * 32
    _, again = meter.run(("lin", shape_key(x)), step)
    assert again == flops and meter.counted_calls == 1  # cached: counted once


def _bert_flops(train: bool) -> int:
    cfg = ModelConfig(name="tiny-bert", hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)
    model = build_model(cfg, 2, seed=0)
    model.train(train)
    ids = torch.randint(1000, 2000, (4, 16))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.zeros(4, dtype=torch.long)}
    meter = FlopMeter()
    with torch.set_grad_enabled(train):
        _, flops = meter.run("bert", lambda: model(**batch))
    return flops


def test_attention_is_counted_in_eval_mode_too():
    # Analytic forward FLOPs of the tiny BERT encoder (B=4, S=16, H=32, I=64, L=2):
    B, S, H, I, L = 4, 16, 32, 64, 2
    per_layer = 2 * B * S * (4 * H * H + 2 * H * I) + 2 * 2 * B * S * S * H  # linears + QK^T and AV
    head = 2 * B * H * H + 2 * B * H * 2  # pooler + classifier
    expected = L * per_layer + head
    assert _bert_flops(train=False) == expected
    assert _bert_flops(train=True) == expected  # same count whichever attention kernel runs
