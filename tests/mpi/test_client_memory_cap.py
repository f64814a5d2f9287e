"""Each client's training memory under mpiexec: the summary's heaviest client step,
exact for what can be counted (weights read, gradients, AdamW's state), and a device
cap that refuses a run whose clients cannot train."""
from __future__ import annotations

import pytest

from conftest import ROOT, assert_ok, launch
from fedmpi.config import load_config
from fedmpi.experiment import prepare
from fedmpi.models.methods import trainable

pytestmark = pytest.mark.mpi
F32 = 4


def _model(*overrides: str):
    return prepare(load_config(ROOT / "configs" / "tiny.yaml", list(overrides))).model


@pytest.mark.parametrize("method", ["full", "lora"])
def test_fedavg_client_memory_is_the_model_its_gradients_and_adamw_state(tmp_path, method):
    run = launch(tmp_path, 2, f"method.name={method}", name=method)
    assert_ok(run)
    mem = run.summary["client_memory"]
    model = _model(f"method.name={method}")
    params = sum(p.numel() for p in model.parameters()) * F32
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    train = [p for _, p in trainable(model)]
    n = sum(p.numel() for p in train) * F32
    assert params <= mem["weights"] <= params + buffers  # a FedAvg client holds the whole model
    assert mem["gradients"] == n
    assert mem["optimizer"] == 2 * n + F32 * len(train)  # AdamW: two moments + a step counter per tensor
    assert mem["activations"] > 0
    assert mem["total"] == sum(mem[k] for k in ("weights", "gradients", "optimizer", "activations"))


def test_a_split_client_holds_only_its_head_and_tail(tmp_path):
    run = launch(tmp_path, 2, "federation.rounds=1", config=ROOT / "configs" / "tiny_splitfed.yaml")
    assert_ok(run)
    s = run.summary
    mem = s["client_memory"]
    assert s["client_params"] * F32 <= mem["weights"] < s["total_params"] * F32
    assert mem["gradients"] == s["client_trainable_params"] * F32


def test_a_memory_cap_below_the_need_refuses_the_run(tmp_path):
    run = launch(tmp_path, 2, "compute.client_memory_mb=1")
    assert run.proc.returncode == 2
    err = run.proc.stderr
    assert "fedmpi: error: a client needs" in err and "compute.client_memory_mb is 1" in err
    assert "Traceback" not in err
