"""The real pre-trained MiniLM on the real SST-2 (../shared/data/sst2), a couple of rounds."""
from __future__ import annotations

import pytest

from conftest import ROOT, assert_ok, launch

pytestmark = [pytest.mark.mpi, pytest.mark.shared_data]


def test_minilm_learns_sst2(tmp_path, shared_data):
    run = launch(tmp_path, 3, f"data.path={shared_data}", "data.name=sst2", "data.max_train_samples=1200",
                 "data.max_test_samples=300", "data.partition=iid", "federation.num_clients=6", "federation.clients_per_round=3",
                 "federation.rounds=2", "train.local_steps=6", "train.batch_size=16", "model.max_length=64",
                 config=ROOT / "configs" / "quickstart.yaml", timeout=900)
    assert_ok(run)
    s = run.summary
    assert s["total_params"] == s["trainable_params"] == 22_713_986  # all-MiniLM-L6-v2 + 2-way head
    assert s["bytes_up_per_client_round"] == 22_713_986 * 4
    assert s["total_bytes_up"] == 2 * 3 * 22_713_986 * 4
    assert s["final_accuracy"] > 0.65, s  # SST-2 dev is ~balanced: chance is ~0.5
