"""FedPFT under real mpiexec: the proxy's traffic and server work on the ledger, and exact resume."""
from __future__ import annotations

import pytest

from conftest import assert_ok, launch

pytestmark = pytest.mark.mpi
H, I, L = 32, 64, 4  # tiny-bert with 4 layers, every one compressed (the paper's default)
ALIGNED = 3  # neurons re-aligned per layer

# public_data=embedded keeps these runs offline; the default corpus (20 Newsgroups) is tested in tests/unit.
RUN = [f"model.num_layers={L}", "algorithm=fedpft", "federation.rounds=4", "train.lr=0.003",
       "train.local_steps=15", "method.name=lora", "method.r=4", "options.distill_steps=20", "options.align_every=2",
       "options.align_steps=5", f"options.align_neurons={ALIGNED}", "options.public_data=embedded",
       "options.public_samples=200"]


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    """One uninterrupted FedPFT run, shared by the training and resume tests."""
    run = launch(tmp_path_factory.mktemp("fedpft"), 2, *RUN, "output.checkpoint=true", timeout=600)
    assert_ok(run)
    return run


def test_fedpft_trains_under_mpi_and_charges_stats(whole):
    s, rows, metrics = whole.summary, whole.ledger, whole.metrics
    k = I // 4
    # one sub-model download per client, of exactly the sub-model's weights
    init = [r for r in rows if r["kind"] == "init"]
    assert sorted(r["client"] for r in init) == list(range(6))
    assert all(r["bytes"] == s["fedpft_sub_params"] * 4 and r["direction"] == "down" for r in init)
    assert s["fedpft_compressed_layers"] == list(range(L))
    assert s["fedpft_full_params"] - s["fedpft_sub_params"] == L * (I - k) * (2 * H + 1)
    # stats: rounds 1 and 3, one message per sampled client: L layers x k neurons x float32
    stats = [r for r in rows if r["kind"] == "stats"]
    assert sorted({r["round"] for r in stats}) == [1, 3]
    for rnd in (1, 3):
        assert len([r for r in stats if r["round"] == rnd]) == 4  # clients_per_round
    assert all(r["bytes"] == L * k * 4 and r["direction"] == "up" for r in stats)
    # the aligned neurons go down to every client: indices (int64) + W_in rows, biases, W_out columns,
    # and each block's FFN output bias and output LayerNorm (H + 2H floats), which alignment retrains
    sub = [r for r in rows if r["kind"] == "submodel"]
    per_client = {}
    for r in sub:
        per_client[(r["round"], r["client"])] = per_client.get((r["round"], r["client"]), 0) + r["bytes"]
    neurons = L * ALIGNED * 8 + L * (ALIGNED * (2 * H + 1) + 3 * H) * 4
    assert set(per_client.values()) == {neurons} and len(per_client) == 2 * 6
    # server work is metered: distillation before FL, alignment afterwards
    kinds = {(r["round"], r["kind"]) for r in rows if r["direction"] == "server" and r["flops"] > 0}
    assert {(0, "distill"), (1, "align"), (3, "align")} <= kinds
    assert s["fedpft_distill_layer_loss_after"] < s["fedpft_distill_layer_loss_before"]
    assert s["fedpft_distill_mode"] == "cascade" and s["fedpft_public_windows"] == 200
    assert len(s["fedpft_distill_test_layer_mse_after"]) == L
    # the same update bytes as FedAvg of LoRA + classifier
    ups = [r for r in rows if r["kind"] == "update"]
    assert all(r["bytes"] == s["trainable_params"] * 4 for r in ups)
    assert metrics[-1]["loss"] < metrics[0]["loss"]
    assert s["final_accuracy"] is not None


def test_no_align_mode_sends_no_stats(tmp_path):
    run = launch(tmp_path, 2, *RUN, "options.mode=no_align", "federation.rounds=2", timeout=600)
    assert_ok(run)
    kinds = {r["kind"] for r in run.ledger}
    assert "stats" not in kinds and "submodel" not in kinds and "init" in kinds
    assert not any(r["kind"] in ("distill", "align") for r in run.ledger)


def test_bad_option_ends_the_job_with_a_clear_message(tmp_path):
    run = launch(tmp_path, 2, *RUN, "options.public_data=nowhere", timeout=300)
    assert run.proc.returncode != 0
    assert "options.public_data 'nowhere' not found" in run.proc.stdout + run.proc.stderr


def test_resume_after_a_kill_matches_the_uninterrupted_run(whole, tmp_path):
    """Set-up (sub-model download, distillation) is charged once; the aligned
    FFNs of the checkpoint reach the clients again without a charge."""
    sets = (*RUN, "output.checkpoint=true")
    killed = launch(tmp_path, 2, *sets, name="cut", env={"FEDMPI_KILL_AT_ROUND": "3"}, timeout=600)
    assert killed.proc.returncode != 0 and [m["round"] for m in killed.metrics] == [0, 1, 2]
    resumed = launch(tmp_path, 2, *sets, name="cut", extra=("--resume",), timeout=600)
    assert_ok(resumed)
    assert resumed.ledger == whole.ledger
    # the cluster's own transport differs: the resumed job re-sends the aligned FFNs, uncharged
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("wall_seconds", "transport_bytes")}
                          for r in rows]
    assert strip(resumed.metrics) == strip(whole.metrics)
