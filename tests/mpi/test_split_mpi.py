"""Split learning under mpiexec: the wire carries exactly (seq + prompt) x hidden x 4 bytes
per sample per crossing, SplitFed and SFPrompt train, and local-loss steps cost no traffic."""
from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import pytest

from conftest import ROOT, assert_ok, launch, tiny_split_setup
from fedmpi.config import load_config
from fedmpi.engine.sampling import sample_clients

pytestmark = pytest.mark.mpi
SPLITFED = ROOT / "configs" / "tiny_splitfed.yaml"
SFPROMPT = ROOT / "configs" / "tiny_sfprompt.yaml"
TIMEOUT = 600  # the machine is shared and loaded


@pytest.fixture(scope="module")
def tiny():
    """(cfg, prepared model/data, FederatedData) of the tiny split config."""
    return tiny_split_setup()


@pytest.mark.mpi
def test_bad_split_fails_the_run_with_a_clear_message(tmp_path):
    run = launch(tmp_path, 2, "options.split_head_layers=2", config=SPLITFED, timeout=TIMEOUT)
    assert run.proc.returncode != 0
    text = run.proc.stdout + run.proc.stderr
    assert "options.split_head_layers (2) + options.split_tail_layers (1)" in text
    assert "Traceback" not in text



def _rows(run, **match):
    return [r for r in run.ledger if all(r[k] == v for k, v in match.items())]


@pytest.mark.mpi
def test_splitfed_trains_and_activation_bytes_are_exact(tmp_path, tiny):
    run = launch(tmp_path, 2, config=SPLITFED, timeout=TIMEOUT)
    assert_ok(run)
    cfg, _, data = tiny
    losses = [m["loss"] for m in run.metrics]
    assert len(losses) == cfg.federation.rounds
    assert np.mean(losses[-2:]) < losses[0] - 0.05, losses
    # The exact formula: per sample per step (seq + prompt) x hidden x 4 bytes, four crossings.
    p, h, fed, bs = cfg.options.prompt_tokens, cfg.model.hidden_size, cfg.federation, cfg.train.batch_size
    for rnd in range(fed.rounds):
        for c in sample_clients(fed.num_clients, fed.clients_per_round, cfg.seed, rnd):
            sizes = [b["input_ids"].shape[0] * (b["input_ids"].shape[1] + p)
                     for b in data.client_batches(c, rnd, cfg.train.local_steps, bs)]
            want = [n * h * 4 for n in sizes]
            for kind in ("activations", "gradients"):
                for direction in ("up", "down"):
                    got = [r["bytes"] for r in _rows(run, round=rnd, client=c, kind=kind, direction=direction)]
                    assert got == want, (rnd, c, kind, direction)
            assert [r["bytes"] for r in _rows(run, round=rnd, client=c, kind="mask")] == sizes
    kinds = {r["kind"] for r in run.ledger if r["bytes"]}
    assert kinds == {"model", "update", "activations", "gradients", "mask"}
    # Server FLOPs are recorded apart from client FLOPs: one SERVER row per served client.
    s = run.summary
    server_rows = _rows(run, direction="server", kind="compute")
    assert len(server_rows) == fed.rounds * fed.clients_per_round and all(r["flops"] > 0 for r in server_rows)
    assert s["total_server_flops"] >= sum(r["flops"] for r in server_rows) > 0
    assert s["total_client_flops"] == sum(r["flops"] for r in _rows(run, direction="local"))
    assert s["server_trainable_params"] > 0 and s["client_trainable_params"] + s["server_trainable_params"] == \
        s["total_params"]
    for r in _rows(run, kind="update"):
        assert r["bytes"] == s["client_trainable_params"] * 4


@pytest.mark.mpi
def test_splitfed_with_one_client_is_fedavg_exactly(tmp_path):
    """With one client a round there is nothing to average: SplitFed (V1 here)
    must then be full fine-tuning, computed over the wire, to the last bit."""
    common = ("federation.clients_per_round=1", "federation.rounds=2", "train.local_steps=4",
              "options.prompt_tokens=0", "options.splitfed_version=v1")
    split = launch(tmp_path, 2, *common, config=SPLITFED, name="split", timeout=TIMEOUT)
    assert_ok(split)
    full = launch(tmp_path, 2, *common, "algorithm=fedavg", "options={}", config=SPLITFED, name="full",
                  timeout=TIMEOUT)
    assert_ok(full)
    for a, b in zip(split.metrics, full.metrics):
        assert (a["loss"], a["test_loss"], a["accuracy"]) == (b["loss"], b["test_loss"], b["accuracy"])


@pytest.mark.mpi
def test_sfprompt_trains_prompt_and_tail_with_a_frozen_body(tmp_path):
    """gamma = 1 here: on a random tiny model, pruning each round makes the loss of
    the kept (hardest) samples a moving target; pruning is checked exactly above
    and on the wire below. The default (the paper's) layout gives the client the prompt,
    pooler and classifier; the [CLS] row of a *random* 3-layer body barely depends on the
    input (loss stays at 0.69 for 8 rounds, any lr), so learning is shown with one tail
    layer, which reads every row."""
    run = launch(tmp_path, 2, "options.prune_ratio=1.0", "federation.rounds=1", config=SFPROMPT, timeout=TIMEOUT)
    assert_ok(run)
    s = run.summary
    assert s["server_trainable_params"] == 0 and s["server_params"] > 0
    cfg = load_config(SFPROMPT)
    h = cfg.model.hidden_size
    # the paper's layout: every encoder layer on the server; the client trains prompt, pooler, classifier
    assert s["split"] == {"head_layers": 0, "body_layers": 3, "tail_layers": 0, "prompt_tokens": 4}
    prompt, pooler, classifier = cfg.options.prompt_tokens * h, h * h + h, 2 * h + 2
    assert s["client_trainable_params"] == prompt + pooler + classifier
    assert {r["bytes"] for r in _rows(run, kind="update")} == {s["client_trainable_params"] * 4}
    assert (s["tail_receives"], s["head_gradient_rows"]) == ("[CLS] row", "prompt rows (4)")

    deep = launch(tmp_path, 2, "options.prune_ratio=1.0", "options.split_tail_layers=1", "federation.rounds=8",
                  config=SFPROMPT, name="tail1", timeout=TIMEOUT)
    assert_ok(deep)
    losses = [m["loss"] for m in deep.metrics]
    assert losses[-1] < losses[0] - 0.1, losses
    tail_layer = 4 * (h * h + h) + 2 * (h * cfg.model.intermediate_size) + cfg.model.intermediate_size + h + 4 * h
    assert deep.summary["client_trainable_params"] == prompt + tail_layer + pooler + classifier
    assert deep.summary["tail_receives"] == "all rows"


@pytest.mark.mpi
def test_sfprompt_pruning_and_local_loss_on_the_wire(tmp_path):
    """One round with gamma = 0.5: each client makes ceil(gamma * local_steps) split steps on
    batches of its ceil(gamma * n) kept samples; only what each side needs crosses (the tail,
    with no layer, gets the [CLS] row and returns its gradient; the head, with no layer, gets
    the prompt rows of its gradient); local-loss steps add client FLOPs but no message."""
    cfg = load_config(SFPROMPT)
    runs = {}
    for steps in (0, 3):
        runs[steps] = launch(tmp_path, 2, "federation.rounds=1", f"options.local_loss_steps={steps}",
                             config=SFPROMPT, name=f"ll{steps}", timeout=TIMEOUT)
        assert_ok(runs[steps])
    messages = {k: sorted((r["client"], r["direction"], r["kind"]) for r in run.ledger if r["bytes"])
                for k, run in runs.items()}
    assert messages[0] == messages[3]
    assert runs[3].summary["total_client_flops"] > runs[0].summary["total_client_flops"]
    p, h, gamma = cfg.options.prompt_tokens, cfg.model.hidden_size, cfg.options.prune_ratio
    n = cfg.data.max_train_samples // cfg.federation.num_clients
    batch = min(cfg.train.batch_size, math.ceil(gamma * n))
    steps = math.ceil(gamma * cfg.train.local_steps)
    for run in runs.values():
        per = defaultdict(list)
        for r in run.ledger:
            per[(r["client"], r["kind"], r["direction"])].append(r["bytes"])
        for c in range(cfg.federation.num_clients):
            masks = per[(c, "mask", "up")]
            assert len(masks) == steps
            assert per[(c, "activations", "up")] == [m * h * 4 for m in masks]  # the body needs every row
            assert per[(c, "activations", "down")] == [batch * h * 4] * steps  # [CLS] row only
            assert per[(c, "gradients", "up")] == [batch * h * 4] * steps
            assert per[(c, "gradients", "down")] == [batch * p * h * 4] * steps  # prompt rows only
            for m in masks:  # batch x (padded width + prompt), width a multiple of 8
                assert m % batch == 0 and (m // batch - p) % 8 == 0
            # before the cut was charged by need, all four crossings carried every row
            split_bytes = sum(sum(per[(c, k, d)]) for k in ("activations", "gradients") for d in ("up", "down"))
            assert split_bytes < 0.5 * 4 * sum(m * h * 4 for m in masks)


@pytest.mark.mpi
@pytest.mark.shared_data
def test_sfprompt_on_a_vit_splits_at_the_patch_embedding(tmp_path, shared_data):
    """The paper's model family: a ViT on MNIST. The client holds the patch embedding + prompt and
    the final LayerNorm + classifier; images have no padding, so no mask crosses."""
    run = launch(tmp_path, 2, "algorithm=sfprompt", "model.name=tiny-vit", "model.image_size=28",
                 "model.hidden_size=32", "model.num_layers=2", "model.num_heads=2", "model.intermediate_size=64",
                 "data.name=mnist", f"data.path={shared_data}", "data.max_train_samples=64",
                 "data.max_test_samples=64", "options.prompt_tokens=4", "federation.rounds=2",
                 "train.local_steps=4", "train.lr=0.01", "method.name=full", config=SFPROMPT, timeout=TIMEOUT)
    assert_ok(run)
    s, h, p = run.summary, 32, 4
    assert s["split"] == {"head_layers": 0, "body_layers": 2, "tail_layers": 0, "prompt_tokens": p}
    assert s["client_trainable_params"] == p * h + 2 * h + (h * 10 + 10)  # prompt, final LayerNorm, classifier
    rows = {(r["kind"], r["direction"]): r["bytes"] for r in run.ledger if r["bytes"]}
    assert ("mask", "up") not in rows
    batch = rows[("activations", "down")] // (h * 4)
    assert rows[("activations", "up")] == batch * (p + 1 + 16) * h * 4  # prompt + [CLS] + 4x4 patches
    assert rows[("gradients", "up")] == batch * h * 4 and rows[("gradients", "down")] == batch * p * h * 4
