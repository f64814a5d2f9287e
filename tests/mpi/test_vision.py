"""Vision backbones under mpiexec on the MNIST idx files in ../shared/data:
the loss falls and the ledger carries exactly the trainable state."""
from __future__ import annotations

import pytest

from conftest import assert_ok, launch

pytestmark = [pytest.mark.mpi, pytest.mark.shared_data]

ROUNDS, PER_ROUND = 3, 4


@pytest.mark.parametrize("backbone,method,lr", [("tiny-vit", "full", 3e-3), ("tiny-clip", "prompt", 3e-2)])
def test_vision_on_mnist(tmp_path, shared_data, backbone, method, lr):
    run = launch(tmp_path, 2, f"model.name={backbone}", "data.name=mnist", f"data.path={shared_data}",
                 "data.max_train_samples=1200", f"method.name={method}", f"train.lr={lr}", "train.local_steps=5",
                 f"federation.rounds={ROUNDS}", name=f"{backbone}-{method}", timeout=600)
    assert_ok(run)
    s, metrics = run.summary, run.metrics
    assert metrics[-1]["loss"] < metrics[0]["loss"], [m["loss"] for m in metrics]
    n = s["trainable_params"]
    if method == "prompt":  # 20 visual prompt tokens of width 32 + head (32 x 10 + 10)
        assert n == 20 * 32 + 330
    up = [r for r in run.ledger if r["direction"] == "up"]
    assert len(up) == ROUNDS * PER_ROUND and all(r["bytes"] == n * 4 and r["kind"] == "update" for r in up)
