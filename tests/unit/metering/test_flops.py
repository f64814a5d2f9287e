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
    # forward 2*B*in*out, backward (weight grad only: input needs no grad) 2*B*in*out,
    # and the .sum() reads B*out elements (its backward is an expand: free)
    assert flops == 4 * 8 * 64 * 32 + 8 * 32
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
    # Analytic forward FLOPs of the tiny BERT classifier (B=4, S=16, H=32, I=64, L=2, 2 heads,
    # no padding so no mask), in the convention of metering/formulas.py:
    B, S, H, I, L, heads = 4, 16, 32, 64, 2, 2
    T, scores = B * S, B * heads * S * S
    matmuls = 2 * T * (4 * H * H + 2 * H * I) + 2 * 2 * B * S * S * H  # linears + QK^T and AV
    per_layer = (matmuls + 5 * T * H + T * I  # linear biases
                 + 2 * T * H + 5 * scores  # q, k scaling; softmax
                 + 2 * T * H + 2 * 7 * T * H + 5 * T * I)  # residuals, LayerNorms, erf-GELU
    embeddings = 2 * T * H + 7 * T * H  # word + type + position, LayerNorm (the lookups are free)
    head = 2 * B * H * H + 2 * B * H + 2 * B * H * 2 + 2 * B  # pooler (+ bias, tanh), classifier (+ bias)
    loss = 5 * B * 2 + B  # log-softmax over 2 labels, NLL
    expected = L * per_layer + embeddings + head + loss
    assert _bert_flops(train=False) == expected
    assert _bert_flops(train=True) == expected  # same count whichever attention kernel runs


def test_train_steps_counts_the_optimizer_step():
    """Client FLOPs per step = counted forward + backward + the optimizer's formula
    (AdamW: 13 per trainable element + 1 per tensor when weight decay is 0)."""
    from fedmpi.engine.training import train_steps

    layer = nn.Linear(16, 4)
    x, y = torch.randn(8, 16), torch.randn(8, 4)
    batches = [{"x": x, "y": y}] * 3
    opt = torch.optim.AdamW(layer.parameters(), lr=1e-3, weight_decay=0.0)
    loss = lambda m, b: ((m(b["x"]) - b["y"]) ** 2).mean()  # noqa: E731
    stats = train_steps(layer, batches, opt, FlopMeter(), torch.device("cpu"), loss, lambda b: 8)
    n = 16 * 4 + 4
    fwd = 2 * 8 * 16 * 4 + 8 * 4 + 3 * 8 * 4  # addmm + bias, subtract, square, mean
    bwd = 2 * 8 * 4 * 16 + 8 * 4 + 4 * 8 * 4  # weight grad, bias grad (row sum); mean' (/32), square' (2 x^1 g: 3)
    step = 13 * n + 2
    assert stats.flops == 3 * (fwd + bwd + step)


# -- new sequence lengths predicted by a checked quadratic (LengthFit) ------------------------------
def _fake_counter(monkeypatch, truth, current):
    """FlopCounterMode replaced: the 'counted' FLOPs of a step are truth(current length)."""
    from fedmpi.metering import flops as F

    class Counter:
        def __init__(self, **_):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

        def get_total_flops(self):
            return truth(current["n"])

    monkeypatch.setattr(F.fc, "FlopCounterMode", Counter)


def test_length_fit_predicts_exactly_only_after_its_checks(monkeypatch):
    from fedmpi.metering import flops as F

    truth = lambda n: 7 + 300 * n + 11 * n * n  # noqa: E731
    current = {}
    _fake_counter(monkeypatch, truth, current)
    meter = F.FlopMeter()
    for n in (24, 7, 31, 12, 5, 30, 17, 3):
        current["n"] = n
        _, flops = meter.run(("k", n), lambda: None, length=("fam", n))
        assert flops == truth(n)
    # three points for the fit, two checks, then every new length is predicted, not counted
    assert (meter.counted_calls, meter.predicted_calls) == (3 + F.LengthFit.CHECKS, 8 - 3 - F.LengthFit.CHECKS)


def test_length_fit_turns_off_for_good_on_a_miss(monkeypatch):
    from fedmpi.metering import flops as F

    truth = lambda n: n ** 3 + 5 * n  # noqa: E731  (not a quadratic: the first check misses)
    current = {}
    _fake_counter(monkeypatch, truth, current)
    meter = F.FlopMeter()
    lengths = (4, 9, 2, 13, 6, 21, 17, 8)
    for n in lengths:
        current["n"] = n
        assert meter.run(("k", n), lambda: None, length=("fam", n))[1] == truth(n)
    assert meter.predicted_calls == 0 and meter.counted_calls == len(lengths)


def test_length_fit_refuses_a_fractional_prediction():
    from fedmpi.metering.flops import LengthFit

    fit = LengthFit()
    for x, y in ((1, 0), (3, 1), (5, 0)):  # the parabola through them is 3/4 at 2
        fit.learn(x, y)
    assert fit.predict(2) is None


def test_real_bert_steps_of_new_lengths_are_predicted_as_counted():
    """On real BERT training steps, with padding masks: every predicted count equals the
    dispatch mode's, and after the fit's 3 + CHECKS lengths nothing more is counted."""
    from fedmpi.metering.flops import LengthFit, sequence_length

    cfg = ModelConfig(name="tiny-bert", hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)
    model = build_model(cfg, 2, seed=0)
    counted, fitted = FlopMeter(), FlopMeter()
    lengths = (24, 7, 31, 12, 5, 30, 17, 3, 29, 2)
    for n in lengths:
        mask = torch.ones(4, n, dtype=torch.long)
        mask[0, n // 2:] = 0
        batch = {"input_ids": torch.randint(0, 100, (4, n)), "attention_mask": mask,
                 "token_type_ids": torch.zeros(4, n, dtype=torch.long), "labels": torch.tensor([0, 1, 1, 0])}

        def step():
            model.zero_grad(set_to_none=True)
            model(**batch).loss.backward()

        key = ("train", shape_key(batch))
        family, length = sequence_length(batch)
        assert length == n and all(-1 in dims for name, dims in family if name != "labels")
        assert counted.run(key, step)[1] == fitted.run(key, step, length=(family, length))[1]
    assert fitted.counted_calls == 3 + LengthFit.CHECKS
    assert fitted.predicted_calls == len(lengths) - 3 - LengthFit.CHECKS
