"""Robust aggregators against hand-computed values: median, trimmed mean, Krum, multi-Krum, norm clipping."""
from __future__ import annotations

import math

import pytest
import torch

from fedmpi.errors import ConfigError
from fedmpi.strategies.krum import Krum, KrumOptions, MultiKrum, MultiKrumOptions
from fedmpi.strategies.median import Median
from fedmpi.strategies.norm_clip import NormClip, NormClipOptions
from fedmpi.strategies.robust import RobustAggregator
from fedmpi.strategies.trimmed_mean import TrimmedMean, TrimmedMeanOptions


def t(rows):
    return torch.tensor(rows, dtype=torch.float32)


def ones(n):
    return torch.ones(n)


def test_weighted_mean():
    out = RobustAggregator().aggregate(t([[1.0, 0.0], [4.0, 8.0]]), torch.tensor([3.0, 1.0]))
    assert out.tolist() == [1.75, 2.0]


@pytest.mark.parametrize("chunk", [1, 2, 1 << 20])  # column blocks of 1, 2 columns or all
def test_median_odd_and_even(chunk):
    med = Median(chunk_elements=chunk)
    assert med.aggregate(t([[1, 5, 0], [3, -1, 7], [2, 10, 7]]), ones(3)).tolist() == [2, 5, 7]
    # even n: the mean of the two middle values (torch.median would give the lower one)
    assert med.aggregate(t([[1, 0], [2, 4], [3, 4], [10, 9]]), ones(4)).tolist() == [2.5, 4]


def test_median_ignores_weights_and_survives_nan():
    out = Median().aggregate(t([[1.0], [2.0], [float("nan")]]), torch.tensor([1.0, 1.0, 1e9]))
    assert out.tolist() == [2.0]  # NaN sorts to the top like an outlier; the huge weight buys nothing


def test_trimmed_mean_by_hand():
    x = t([[1, -3], [2, 0], [3, 0], [4, 6], [100, 2]])
    assert TrimmedMean(TrimmedMeanOptions(beta=0.2)).aggregate(x, ones(5)).tolist() == [3.0, pytest.approx(2 / 3)]
    assert TrimmedMean(TrimmedMeanOptions(beta=0.4)).aggregate(x, ones(5)).tolist() == [3.0, 0.0]  # k=2: median
    assert TrimmedMean(TrimmedMeanOptions(beta=0.0)).aggregate(x, ones(5)).tolist() == [22.0, 1.0]  # plain mean
    assert TrimmedMean(TrimmedMeanOptions(beta=0.39)).trimmed(5) == 1


def test_translation_equivariance_of_order_statistics():
    g = torch.Generator().manual_seed(1)
    deltas = torch.randn(7, 5, generator=g)
    shift = torch.tensor([100.0, -3.0, 0.5, 8.0, 1.0])
    for agg in (Median(), TrimmedMean(TrimmedMeanOptions(beta=0.2)), Krum(KrumOptions(f=1)),
                MultiKrum(MultiKrumOptions(f=1, m=3))):
        on_deltas = agg.aggregate(deltas, ones(7))
        on_states = agg.aggregate(deltas + shift, ones(7)) - shift
        assert torch.allclose(on_deltas, on_states, atol=1e-4), agg.name


# 1-D points 0, 1, 2, 3, 100 (n = 5, f = 1: each score sums the n − f − 2 = 2 nearest squared distances):
# 0: 1+4 = 5, 1: 1+1 = 2, 2: 1+1 = 2, 3: 1+4 = 5, 100: 97²+98². Ties go to the lower slot.
POINTS = t([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [3.0, 0.0], [100.0, 0.0]])


def test_krum_picks_by_hand():
    k = Krum(KrumOptions(f=1))
    out = k.aggregate(POINTS, torch.tensor([1.0, 1.0, 3.0, 1.0, 1.0]))
    assert k.selected == [1] and out.tolist() == [1.0, 0.0]


def test_multi_krum_averages_the_m_best_weighted():
    k = MultiKrum(MultiKrumOptions(f=1, m=2))
    out = k.aggregate(POINTS, torch.tensor([1.0, 1.0, 3.0, 1.0, 1.0]))
    assert k.selected == [1, 2] and out.tolist() == [1.75, 0.0]  # (1·1 + 3·2)/4
    k3 = MultiKrum(MultiKrumOptions(f=1, m=4))  # the outlier has the worst score: never kept
    k3.aggregate(POINTS, ones(5))
    assert sorted(k3.selected) == [0, 1, 2, 3]


def test_krum_rejects_a_constructed_outlier_in_high_dimension():
    g = torch.Generator().manual_seed(0)
    honest = 0.1 * torch.randn(6, 1000, generator=g) + 1.0
    attacker = torch.full((1, 1000), -5.0)
    x = torch.cat([honest[:3], attacker, honest[3:]])
    for agg in (Krum(KrumOptions(f=1), chunk_elements=700), MultiKrum(MultiKrumOptions(f=1, m=5))):
        agg.aggregate(x, ones(7))
        assert 3 not in agg.selected
    nan = x.clone()
    nan[0, 5] = float("nan")
    k = Krum(KrumOptions(f=2))
    k.aggregate(nan, ones(7))
    assert k.selected[0] not in (0, 3)


def test_krum_refuses_too_few_arrived():
    with pytest.raises(ConfigError, match=r"strategy.aggregator.f = 1 needs more than 2f \+ 2 = 4.*only 4 arrived "
                                          r"in round 7"):
        Krum(KrumOptions(f=1)).aggregate(POINTS[:4], ones(4), rnd=7)
    Krum(KrumOptions(f=1)).aggregate(POINTS, ones(5))  # n = 5 > 4 is served


def test_norm_clip_by_hand():
    # ‖(3, 4)‖ = 5 -> (0.6, 0.8) at C = 1; (0.3, 0) is inside
    out = NormClip(NormClipOptions(clip=1.0)).aggregate(t([[3.0, 4.0], [0.3, 0.0]]), torch.tensor([1.0, 3.0]))
    assert out.tolist() == pytest.approx([(0.6 + 3 * 0.3) / 4, 0.8 / 4])


def test_norm_clip_bounds_each_clients_contribution():
    g = torch.Generator().manual_seed(2)
    deltas = torch.randn(5, 50, generator=g)
    weights = torch.tensor([1.0, 2.0, 3.0, 1.0, 3.0])
    clip = NormClip(NormClipOptions(clip=0.5))
    base = clip.aggregate(deltas, weights)
    for i, scale in [(1, 1e6), (4, -1e3)]:
        attacked = deltas.clone()
        attacked[i] *= scale
        moved = float(torch.linalg.vector_norm(clip.aggregate(attacked, weights) - base))
        assert moved <= 2 * 0.5 * float(weights[i] / weights.sum()) + 1e-6  # at most C on each side
    assert float(torch.linalg.vector_norm(base)) <= 0.5 + 1e-6
    poisoned = deltas.clone()
    poisoned[0, 0] = float("inf")
    out = clip.aggregate(poisoned, weights)  # a non-finite update contributes nothing
    assert math.isfinite(float(out.sum()))
    rest = clip.aggregate(deltas[1:], weights[1:]) * float(weights[1:].sum() / weights.sum())
    assert torch.allclose(out, rest, atol=1e-6)
