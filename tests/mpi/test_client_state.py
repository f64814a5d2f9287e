"""Per-client state at scale: 1,000 clients x 256 KB under a 16 MB budget. The server's
memory stays bounded (the rest spills into the run folder), and the state is the same
whatever the rank count, and after a kill and a resume.

The state's user is an algorithm defined here: FedAvg whose clients each keep a 256 KB
tensor that evolves with every participation (like an error-feedback residual)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import assert_ok, launch
from fedmpi.algorithms.fedavg import FedAvg
from fedmpi.engine.training import LocalStats
from fedmpi.seeding import derive_seed

pytestmark = pytest.mark.mpi
HERE = Path(__file__).resolve().parent
ENV = {"PYTHONPATH": f"{HERE}:{HERE.parent}"}
VALUES = 256 * 1024 // 4  # 256 KB of float32


class Remembering(FedAvg):
    uses_client_state = True

    def train_client(self, client: int, rnd: int) -> LocalStats:
        state = self.ctx.state.of(client)
        g = torch.Generator().manual_seed(derive_seed(client, rnd))
        fresh = torch.randn(VALUES, generator=g)
        state["memory"] = state["memory"] * 0.5 + fresh if "memory" in state else fresh
        state["visits"] = state.get("visits", torch.zeros((), dtype=torch.int64)) + 1
        return super().train_client(client, rnd)


SETS = ("algorithm=test_client_state:Remembering", "federation.num_clients=1000",
        "federation.clients_per_round=200", "federation.rounds=4", "train.local_steps=1", "train.batch_size=2",
        "data.max_train_samples=2000", "data.max_test_samples=50", "state.memory_mb=16",
        "output.checkpoint=true")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("state")
    three, five = launch(tmp, 3, *SETS, name="r3", env=ENV), launch(tmp, 5, *SETS, name="r5", env=ENV)
    plain = launch(tmp, 3, *SETS[1:], name="plain")  # the same run with FedAvg: no client state
    for r in (three, five, plain):
        assert_ok(r)
    return three, five, plain


def test_state_spills_and_memory_stays_bounded(runs):
    three, _, plain = runs
    st = three.summary["client_state"]
    assert st["clients"] > 500  # each of them holds 256 KB: > 125 MB in all
    assert st["spills"] > 0
    spilled = list((three.dir / "client_state").glob("*.pt"))
    assert spilled and all(f.stat().st_size >= VALUES * 4 for f in spilled)
    growth = three.summary["peak_memory_bytes"][0] - plain.summary["peak_memory_bytes"][0]
    assert growth <= 20 * 2**20, f"server RSS grew by {growth / 2**20:.1f} MB"


def test_state_is_the_same_on_3_and_5_ranks(runs):
    three, five, _ = runs
    assert three.summary["client_state"]["digest"] == five.summary["client_state"]["digest"]
    assert three.ledger == five.ledger


def test_state_after_a_kill_and_resume_is_the_uninterrupted_state(runs, tmp_path):
    three = runs[0]
    cut = launch(tmp_path, 3, *SETS, name="cut", env={**ENV, "FEDMPI_KILL_AT_ROUND": "2"})
    assert cut.proc.returncode != 0
    resumed = launch(tmp_path, 3, *SETS, name="cut", env=ENV, extra=("--resume",))
    assert_ok(resumed)
    assert resumed.summary["client_state"]["digest"] == three.summary["client_state"]["digest"]
    assert resumed.ledger == three.ledger
