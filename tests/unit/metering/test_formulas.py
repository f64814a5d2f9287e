"""FLOP formulas: one BERT layer's forward + backward against a count written
by hand from its architecture, and the optimizer step against a counted one.

The convention is the one stated in fedmpi/metering/formulas.py (model FLOPs,
PaLM App. B; per-element costs from the arithmetic of each op). T = B x S
tokens; every parameter trains and the layer's input needs a gradient (a
middle layer of full fine-tuning).
"""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils import flop_counter as fc

from fedmpi.metering.flops import FlopMeter
from fedmpi.metering.formulas import FORMULAS, optimizer_step_flops

B, S, H, I, HEADS = 4, 16, 64, 256, 4


def bert_layer(dropout: float):
    from transformers import BertConfig
    from transformers.models.bert.modeling_bert import BertLayer

    torch.manual_seed(0)
    conf = BertConfig(hidden_size=H, num_attention_heads=HEADS, intermediate_size=I, hidden_act="gelu",
                      hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    conf._attn_implementation = "sdpa"
    return BertLayer(conf), conf


def layer_step(dropout: float, train: bool, padded: bool = True, torch_only: bool = False):
    """Counted FLOPs of one layer's forward (+ backward when training): by the
    meter, or by torch's counter alone (matrix products only)."""
    from transformers.masking_utils import create_bidirectional_mask

    layer, conf = bert_layer(dropout)
    layer.train(train)
    x = torch.randn(B, S, H, requires_grad=train)
    mask = torch.ones(B, S, dtype=torch.long)
    if padded:
        mask[0, 10:] = 0
    attn = create_bidirectional_mask(config=conf, inputs_embeds=x, attention_mask=mask)
    grad = torch.randn(B, S, H)

    def step():
        out = layer(x, attn)
        out = out[0] if isinstance(out, tuple) else out
        if train:
            out.backward(grad)
        return out

    if torch_only:
        counter = fc.FlopCounterMode(display=False)
        with counter:
            step()
        return counter.get_total_flops()
    _, flops = FlopMeter().run("layer", step)
    return flops


def analytic(train: bool, dropout: float, masked: bool) -> int:
    """One BERT layer by hand. Linear: 2 x in x out per token + 1 per output (bias)."""
    T, scores = B * S, B * HEADS * S * S
    drop = dropout > 0 and train
    lin = lambda i, o: 2 * T * i * o + T * o  # noqa: E731
    fwd = (4 * lin(H, H)                                 # query, key, value, attention output
           + 4 * B * S * S * H                           # Q K^T and P V
           + 2 * T * H                                   # q and k scaled by sqrt(1/sqrt(d))
           + scores * (5 + masked + 2 * drop)            # softmax, additive mask, dropout on P
           + 2 * drop * T * H + T * H + 7 * T * H        # dropout, residual, LayerNorm (weight + bias)
           + lin(H, I) + 5 * T * I + lin(I, H)           # FFN with erf-GELU
           + 2 * drop * T * H + T * H + 7 * T * H)       # dropout, residual, LayerNorm
    if not train:
        return fwd
    wgrad = lambda i, o: 2 * T * i * o + T * o  # noqa: E731  weight gradient + bias gradient (row sum)
    bwd = (13 * T * H                                    # LayerNorm 2: input 10, weight 2, bias 1
           + drop * T * H                                # dropout: grad x mask
           + lin(I, H) - T * H + wgrad(I, H)             # output dense: dX (no bias term) + dW, db
           + 11 * T * I                                  # GELU'
           + lin(H, I) - T * I + wgrad(H, I)             # intermediate dense
           + T * H                                       # LayerNorm 1's output feeds FFN and residual: one add
           + 13 * T * H + drop * T * H                   # LayerNorm 1, dropout
           + lin(H, H) - T * H + wgrad(H, H)             # attention output dense
           + 8 * B * S * S * H                           # dV, dP, dQ, dK (no recomputation: model FLOPs)
           + scores * (4 + drop) + 2 * T * H             # softmax', dropout', the q/k scalings
           + 3 * (lin(H, H) - T * H + wgrad(H, H))       # query, key, value
           + 3 * T * H)                                  # the input feeds q, k, v and the residual: 3 adds
    return fwd + bwd


@pytest.mark.parametrize("dropout,train", [(0.1, True), (0.0, True), (0.1, False)],
                         ids=["train-dropout(math path)", "train-no-dropout(fused CPU flash)", "eval(fused)"])
def test_bert_layer_matches_analytic_count(dropout, train):
    counted = layer_step(dropout, train)
    expected = analytic(train, dropout, masked=True)
    assert abs(counted - expected) / expected < 0.01, (counted, expected)
    print(f"counted {counted:,} analytic {expected:,} ({counted / expected - 1:+.4%})")


def test_matmuls_alone_miss_what_the_formulas_add():
    """torch's counter alone (the meter before these formulas) misses LayerNorm, GELU,
    softmax, dropout, residuals and bias terms: 3% of this small layer, outside the 1% bound."""
    expected = analytic(True, 0.1, masked=True)
    assert layer_step(0.1, True, torch_only=True) < 0.99 * expected


def test_embedding_lookup_is_free_and_its_backward_is_an_index_add():
    emb = nn.Embedding(100, 8)
    ids = torch.randint(0, 100, (3, 5))
    _, fwd = FlopMeter().run("e", lambda: emb(ids))
    assert fwd == 0
    g = torch.randn(3, 5, 8)
    _, both = FlopMeter().run("eb", lambda: emb(ids).backward(g))
    assert both == 3 * 5 * 8


def _counted_step(opt: torch.optim.Optimizer) -> int:
    counter = fc.FlopCounterMode(display=False, custom_mapping=FORMULAS)
    with counter:
        opt.step()
    return counter.get_total_flops()


@pytest.mark.parametrize("name,kw,per_elem", [
    ("adamw", dict(lr=1e-3, weight_decay=0.0), 13), ("adamw", dict(lr=1e-3, weight_decay=0.01), 14),
    ("adam", dict(lr=1e-3, weight_decay=0.01), 15), ("sgd", dict(lr=0.1), 2),
    ("sgd", dict(lr=0.1, weight_decay=0.01), 4), ("sgd", dict(lr=0.1, momentum=0.9, nesterov=True), 6)])
def test_optimizer_step_flops(name, kw, per_elem):
    """Hand count per element x parameters with a gradient (+1 per tensor for Adam's step
    counter), and the same as the kernels the step really dispatches (second step:
    the first one only allocates state)."""
    lin = nn.Linear(64, 32)
    frozen = nn.Linear(8, 8)  # no gradient: the step skips it
    cls = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam, "sgd": torch.optim.SGD}[name]
    opt = cls(list(lin.parameters()) + list(frozen.parameters()), **kw)
    for _ in range(2):
        lin(torch.randn(2, 64)).sum().backward()
        expected = per_elem * (64 * 32 + 32) + (2 if name.startswith("adam") else 0)
        assert optimizer_step_flops(opt) == expected
        counted = _counted_step(opt)
    assert counted == expected
