"""DP-FedAvg: clipping, the fixed denominator, the noise scale (statistical, fixed seed), adaptive clipping."""
from __future__ import annotations

import math

import pytest
import torch

from fedmpi.strategies.adaptive_clip import AdaptiveClip, update_noise_multiplier
from fedmpi.strategies.dp import DPFedAvg, DPOptions, generator

D = 200_000  # coordinates: the sample std has a relative standard error of 1/sqrt(2D) = 0.16%


def test_clip_and_bit():
    dp = DPFedAvg(DPOptions(clip=1.0, noise_multiplier=0.0), clients_per_round=4)
    big, bit = dp.privatize(torch.tensor([3.0, 4.0]), client=0, rnd=0)
    assert big.tolist() == pytest.approx([0.6, 0.8]) and bit == 0.0
    small, bit = dp.privatize(torch.tensor([0.3, 0.4]), client=1, rnd=0)
    assert small.tolist() == pytest.approx([0.3, 0.4]) and bit == 1.0


def test_fixed_denominator_ignores_who_arrived():
    dp = DPFedAvg(DPOptions(clip=10.0, noise_multiplier=0.0), clients_per_round=4)
    two = torch.tensor([1.0, 2.0]) + torch.tensor([3.0, 2.0])  # only 2 of the 4 expected arrived
    assert dp.release(two, unclipped=2, rnd=0).tolist() == [1.0, 1.0]  # Σ/4, not Σ/2
    assert DPFedAvg(DPOptions(expected_clients=8, noise_multiplier=0.0), clients_per_round=4).denominator == 8


def test_central_noise_scale_and_replay():
    z, clip, m = 1.5, 0.2, 10
    dp = DPFedAvg(DPOptions(noise_multiplier=z, clip=clip), clients_per_round=m, seed=3)
    assert dp.noise_std() == pytest.approx(z * clip / m)  # 0.03
    noise = dp.release(torch.zeros(D), unclipped=0, rnd=5)
    assert float(noise.std()) == pytest.approx(0.03, rel=0.01)  # ~6 standard errors
    assert abs(float(noise.mean())) < 4 * 0.03 / math.sqrt(D)
    assert torch.equal(noise, dp.release(torch.zeros(D), 0, rnd=5))  # (seed, round) replays it
    assert not torch.equal(noise, dp.release(torch.zeros(D), 0, rnd=6))


def test_local_noise_is_per_client_and_nothing_central():
    dp = DPFedAvg(DPOptions(noise_multiplier=2.0, clip=1.0, noise="local"), clients_per_round=5, seed=1)
    a, _ = dp.privatize(torch.zeros(D), client=0, rnd=0)
    b, _ = dp.privatize(torch.zeros(D), client=1, rnd=0)
    assert float(a.std()) == pytest.approx(2.0, rel=0.01) and not torch.equal(a, b)
    assert dp.noise_std() == 0.0
    assert dp.release(torch.ones(3), 0, rnd=0).tolist() == pytest.approx([0.2, 0.2, 0.2])


def test_bound_reclips_what_a_lossy_codec_inflated():
    dp = DPFedAvg(DPOptions(clip=1.0), clients_per_round=2)
    clipped, _ = dp.privatize(torch.tensor([6.0, 8.0]), 0, 0)
    inflated = clipped * 1.01  # a codec's error
    assert float(torch.linalg.vector_norm(dp.bound(inflated))) == pytest.approx(1.0)


def test_adaptive_clip_step_by_hand():
    # C = 1, γ = 0.5, η_C = 0.2, no count noise; 8 of 10 expected were unclipped: b̄ = 0.8,
    # C ← exp(−0.2·0.3) = 0.941765
    a = AdaptiveClip(1.0, 0.5, 0.2, sigma_b=0.0, expected_clients=10)
    assert a.update(8, generator(0)) == pytest.approx(0.8)
    assert a.clip == pytest.approx(math.exp(-0.06))
    a.update(2, generator(1))  # b̄ = 0.2 < γ: C grows by exp(0.06) back to 1
    assert a.clip == pytest.approx(1.0)


def test_adaptive_noise_split_and_state():
    # z = 1, σ_b = m/20 = 1 for m = 20: z_Δ = (1 − 1/4)^(−1/2) = 1.1547
    assert update_noise_multiplier(1.0, 1.0) == pytest.approx(1 / math.sqrt(0.75))
    dp = DPFedAvg(DPOptions(noise_multiplier=1.0, clip=0.5, adaptive=True), clients_per_round=20, seed=0)
    assert dp.sigma_b == 1.0 and dp.z_update == pytest.approx(1.1547, abs=1e-4)
    dp.release(torch.zeros(4), unclipped=20, rnd=0)  # everyone under C: C shrinks
    assert dp.clip < 0.5
    other = DPFedAvg(DPOptions(noise_multiplier=1.0, clip=0.5, adaptive=True), clients_per_round=20)
    other.load_state_dict(dp.state_dict())
    assert other.clip == dp.clip
