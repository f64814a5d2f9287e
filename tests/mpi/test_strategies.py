"""Strategies under real mpiexec: each gives the same metrics and ledger on 3 and 4 ranks,
SCAFFOLD's variates travel as their own ledger kind, robust aggregators see every update
(deployment bytes unchanged), and DP reports the accountant's epsilon."""
from __future__ import annotations

import pytest

from conftest import assert_ok, launch

pytestmark = pytest.mark.mpi
VOLATILE = {"wall_seconds", "transport_bytes"}
BASE = ("federation.rounds=3", "federation.num_clients=8", "federation.clients_per_round=5",
        "data.partition=dirichlet", "network.heterogeneity=0.5", "compute.heterogeneity=0.3")
FAMILIES = {
    "client": ("strategy.client.name=scaffold", "train.optimizer=sgd", "train.lr=0.05"),
    "robust": ("strategy.aggregator.name=multi_krum", "strategy.aggregator.f=1", "strategy.aggregator.m=3"),
    "server": ("strategy.server.name=fedadam", "strategy.server.lr=0.01"),
    "privacy": ("strategy.privacy.name=dp", "strategy.privacy.noise_multiplier=0.5", "strategy.privacy.clip=1.0",
                "strategy.privacy.adaptive=true", "strategy.privacy.count_stddev=1.0"),
}
MORE = {  # the rest of the matrix: marked slow
    "fedprox": ("strategy.client.name=fedprox", "strategy.client.mu=0.1"),
    "median": ("strategy.aggregator.name=median",),
    "trimmed_mean": ("strategy.aggregator.name=trimmed_mean", "strategy.aggregator.beta=0.2"),
    "norm_clip": ("strategy.aggregator.name=norm_clip", "strategy.aggregator.clip=0.5"),
    "fedyogi": ("strategy.server.name=fedyogi",),
    "fedavgm": ("strategy.server.name=fedavgm",),
    "local_dp": ("strategy.privacy.name=dp", "strategy.privacy.noise=local", "strategy.privacy.noise_multiplier=0.3"),
}


def strip(rows):
    return [{k: v for k, v in r.items() if k not in VOLATILE} for r in rows]


def same_on_3_and_4_ranks(tmp_path, name, sets):
    three = launch(tmp_path, 3, *BASE, *sets, name=f"{name}3")
    four = launch(tmp_path, 4, *BASE, *sets, name=f"{name}4")
    assert_ok(three)
    assert_ok(four)
    assert strip(three.metrics) == strip(four.metrics)
    assert three.ledger == four.ledger
    return three


@pytest.mark.parametrize("family", list(FAMILIES))
def test_each_family_is_independent_of_rank_packing(tmp_path, family):
    run = same_on_3_and_4_ranks(tmp_path, family, FAMILIES[family])
    state = run.summary["trainable_params"] * 4
    ups = [r for r in run.ledger if r["direction"] == "up" and r["kind"] == "update"]
    assert ups and all(r["bytes"] == state for r in ups)  # deployment bytes unchanged by the strategy
    if family == "client":  # SCAFFOLD: c down and delta c up, each the trainable size, as kind control
        for direction in ("up", "down"):
            ctrl = [r for r in run.ledger if r["kind"] == "control" and r["direction"] == direction]
            assert ctrl and all(r["bytes"] == state for r in ctrl)
        assert len([r for r in run.ledger if r["kind"] == "control" and r["direction"] == "up"]) == len(ups)
    if family == "privacy":
        from fedmpi.strategies.accounting import epsilon

        evaluated = [m for m in run.metrics if m["accuracy"] is not None]
        assert all(m["epsilon"] > 0 for m in evaluated)
        assert run.summary["epsilon"] == pytest.approx(epsilon(0.5, (5, 8), 3, 1e-5, "without_replacement"))
        assert [r["bytes"] for r in run.ledger if r["kind"] == "stats"] == [8] * 15  # adaptive C, down


@pytest.mark.slow
@pytest.mark.parametrize("name", list(MORE))
def test_the_rest_of_the_matrix_is_independent_of_rank_packing(tmp_path, name):
    same_on_3_and_4_ranks(tmp_path, name, MORE[name])


def test_a_strategy_a_split_algorithm_cannot_serve_is_refused(tmp_path):
    run = launch(tmp_path, 3, "algorithm=splitfed", "model.num_layers=3", "strategy.client.name=fedprox",
                 timeout=120)
    assert run.proc.returncode == 2
    assert "strategy.client.name fedprox changes each local step" in run.proc.stderr
    assert not run.dir.exists()
