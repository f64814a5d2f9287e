"""The accountant: Poisson ε from dp-accounting and from Opacus agree; without replacement beside it."""
from __future__ import annotations

import math

import pytest

pytest.importorskip("dp_accounting")

from fedmpi.strategies.accounting import epsilon, local_epsilon, opacus_epsilon  # noqa: E402

CASES = [(1.0, 10, 1000, 1000, 1e-5), (2.0, 50, 500, 200, 1e-6), (0.8, 4, 10, 50, 1e-5)]  # z, k, N, rounds, δ
INTEGER_ORDERS = list(range(2, 256))


@pytest.mark.parametrize("z, k, n, rounds, delta", CASES)
def test_poisson_epsilon_agrees_across_libraries(z, k, n, rounds, delta):
    pytest.importorskip("opacus")
    # Integer orders: both libraries evaluate the same closed form, so they must agree to rounding.
    ours = epsilon(z, k / n, rounds, delta, sampling="poisson", orders=INTEGER_ORDERS)
    assert ours == pytest.approx(opacus_epsilon(z, k / n, rounds, delta, orders=INTEGER_ORDERS), rel=1e-9)
    # dp-accounting's default orders (fractional ones too): same to 1e-5 where its fractional-order series
    # converges; at q = 0.4, z = 0.8 it drops orders 1.1-1.7 as unconverged and reports a larger
    # (still valid) ε than Opacus: 32.55 vs 32.22.
    ours = epsilon(z, k / n, rounds, delta, sampling="poisson")
    theirs = opacus_epsilon(z, k / n, rounds, delta)
    if k / n < 0.4:
        assert ours == pytest.approx(theirs, rel=1e-5)
    else:
        assert theirs <= ours <= theirs * 1.02
    wor = epsilon(z, (k, n), rounds, delta)  # reported beside it: REPLACE_ONE, sensitivity 2C
    print(f"z={z} q={k / n} rounds={rounds} delta={delta}: poisson {ours:.4f} (opacus {theirs:.4f}), "
          f"without replacement {wor:.4f}")
    assert math.isfinite(wor) and wor > ours


def test_known_value_and_monotonicity():
    # Abadi et al.'s setting as dp-accounting computes it: q = 0.01, z = 1.0, 1000 steps, δ = 1e-5
    assert epsilon(1.0, 0.01, 1000, 1e-5, sampling="poisson") == pytest.approx(2.1014, abs=1e-3)
    assert epsilon(2.0, (10, 1000), 100, 1e-5) < epsilon(1.0, (10, 1000), 100, 1e-5)
    assert epsilon(1.0, (10, 1000), 200, 1e-5) > epsilon(1.0, (10, 1000), 100, 1e-5)
    assert epsilon(0.0, (10, 100), 5, 1e-5) == math.inf and epsilon(1.0, (10, 100), 0, 1e-5) == 0.0


def test_dp_reports_what_the_accountant_says():
    from fedmpi.strategies.dp import DPFedAvg, DPOptions

    dp = DPFedAvg(DPOptions(noise_multiplier=1.0, delta=1e-5), clients_per_round=10)
    assert dp.spent(100, 10, 1000) == epsilon(1.0, (10, 1000), 100, 1e-5)
    assert dp.spent(100, 10, 1000, "poisson") == epsilon(1.0, 0.01, 100, 1e-5, "poisson")


def test_local_dp_composes_without_amplification():
    one, ten = local_epsilon(4.0, 1, 1e-5), local_epsilon(4.0, 10, 1e-5)
    assert 0 < one < ten and ten > epsilon(4.0, (10, 100), 10, 1e-5)


@pytest.mark.parametrize("args, match", [
    ((-1.0, 0.1, 10, 1e-5), "noise multiplier"), ((1.0, 0.1, 10, 0.0), "delta"), ((1.0, 0.1, 10, 1.0), "delta"),
    ((1.0, (11, 10), 10, 1e-5), "clients_per_round"), ((1.0, 0.1, 10, 1e-5), "without replacement needs"),
])
def test_bad_arguments(args, match):
    with pytest.raises(ValueError, match=match):
        epsilon(*args)
