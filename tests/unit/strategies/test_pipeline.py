"""The order of operations in one process: clip -> codec -> bound -> aggregate -> noise -> server optimiser."""
from __future__ import annotations

import pytest
import torch

from fedmpi.strategies.adaptive import AdamOptions, FedAdam
from fedmpi.strategies.base import ServerStrategy
from fedmpi.strategies.dp import DPFedAvg, DPOptions
from fedmpi.strategies.median import Median
from fedmpi.strategies.pipeline import server_round


def test_dp_round_clips_before_the_codec_and_bounds_after():
    params = [torch.zeros(2)]
    states = {0: torch.tensor([30.0, 40.0]), 1: torch.tensor([0.3, 0.4]), 3: torch.tensor([0.0, -2.0])}
    seen = []

    def lossy(client, delta):  # a codec whose error inflates the norm by 10 %
        seen.append(float(torch.linalg.vector_norm(delta)))
        return delta * 1.1

    dp = DPFedAvg(DPOptions(clip=1.0, noise_multiplier=0.0), clients_per_round=4)
    agg = server_round(params, states, {0: 1, 1: 100, 3: 1}, 0, ServerStrategy(), privacy=dp, transmit=lossy)
    assert seen == pytest.approx([1.0, 0.5, 1.0])  # the codec saw clipped deltas
    # bounded again after decoding: (0.6, 0.8) + 1.1·(0.3, 0.4) + (0, −1), over the fixed m = 4, weights ignored
    want = [(0.6 + 0.33) / 4, (0.8 + 0.44 - 1.0) / 4]
    assert agg.tolist() == pytest.approx(want) and params[0].tolist() == pytest.approx(want)


def test_noise_is_released_even_when_nobody_arrived():
    params = [torch.zeros(1000)]
    dp = DPFedAvg(DPOptions(clip=1.0, noise_multiplier=1.0), clients_per_round=10)
    server_round(params, {}, {}, 0, ServerStrategy(), privacy=dp)
    assert float(params[0].std()) == pytest.approx(0.1, rel=0.1)


def test_robust_aggregate_feeds_the_server_optimiser_as_a_state():
    params = [torch.tensor([1.0, 1.0])]
    states = {c: torch.tensor(v) for c, v in enumerate([[2.0, 1.0], [3.0, 1.0], [100.0, 1.0]])}
    agg = server_round(params, states, {0: 1, 1: 1, 2: 1}, 0, FedAdam(AdamOptions(lr=0.1, tau=0.01)),
                       aggregator=Median())
    assert agg.tolist() == [2.0, 0.0]  # median delta; FedAdam then steps along it
    assert params[0][0] > 1.0 and params[0][1] == 1.0
