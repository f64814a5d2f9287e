"""Split learning under mpiexec: the wire carries exactly (seq + prompt) x hidden x 4 bytes
per sample per crossing, SplitFed and SFPrompt train, and local-loss steps cost no traffic."""
from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import pytest

from conftest import ROOT, assert_ok, launch
from fedmpi.config import load_config
from fedmpi.data.federated import FederatedData
from fedmpi.engine.sampling import sample_clients
from fedmpi.experiment import prepare

pytestmark = pytest.mark.mpi
SPLITFED = ROOT / "configs" / "tiny_splitfed.yaml"
SFPROMPT = ROOT / "configs" / "tiny_sfprompt.yaml"
TIMEOUT = 600  # the machine is shared and loaded


@pytest.fixture(scope="module")
def tiny():
    """(cfg, prepared model/data, FederatedData) of the tiny split config."""
    cfg = load_config(SPLITFED)
    prep = prepare(cfg)
    data = FederatedData(prep.dataset, prep.parts, prep.task.encoder(prep.tokenizer), cfg.seed)
    return cfg, prep, data


@pytest.mark.mpi
def test_bad_split_fails_the_run_with_a_clear_message(tmp_path):
    run = launch(tmp_path, 3, "options.split_head_layers=2", config=SPLITFED, timeout=TIMEOUT)
    assert run.proc.returncode != 0
    text = run.proc.stdout + run.proc.stderr
    assert "options.split_head_layers (2) + options.split_tail_layers (1)" in text
    assert "Traceback" not in text



def _rows(run, **match):
    return [r for r in run.ledger if all(r[k] == v for k, v in match.items())]


@pytest.mark.mpi
def test_splitfed_trains_and_activation_bytes_are_exact(tmp_path, tiny):
    run = launch(tmp_path, 3, config=SPLITFED, timeout=TIMEOUT)
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
    split = launch(tmp_path, 3, *common, config=SPLITFED, name="split", timeout=TIMEOUT)
    assert_ok(split)
    full = launch(tmp_path, 3, *common, "algorithm=fedavg", "options={}", config=SPLITFED, name="full",
                  timeout=TIMEOUT)
    assert_ok(full)
    for a, b in zip(split.metrics, full.metrics):
        assert (a["loss"], a["test_loss"], a["accuracy"]) == (b["loss"], b["test_loss"], b["accuracy"])


@pytest.mark.mpi
def test_sfprompt_trains_prompt_and_tail_with_a_frozen_body(tmp_path):
    """gamma = 1 here: on a random tiny model, pruning each round makes the loss of
    the kept (hardest) samples a moving target; pruning is checked exactly above
    and on the wire below."""
    run = launch(tmp_path, 3, "options.prune_ratio=1.0", config=SFPROMPT, timeout=TIMEOUT)
    assert_ok(run)
    losses = [m["loss"] for m in run.metrics]
    assert losses[-1] < losses[0] - 0.1, losses
    s = run.summary
    assert s["server_trainable_params"] == 0 and s["server_params"] > 0
    cfg = load_config(SFPROMPT)
    h = cfg.model.hidden_size
    tail_layer = 4 * (h * h + h) + 2 * (h * cfg.model.intermediate_size) + cfg.model.intermediate_size + h + 4 * h
    prompt, pooler, classifier = cfg.options.prompt_tokens * h, h * h + h, 2 * h + 2
    assert s["client_trainable_params"] == prompt + tail_layer + pooler + classifier
    assert {r["bytes"] for r in _rows(run, kind="update")} == {s["client_trainable_params"] * 4}


@pytest.mark.mpi
def test_sfprompt_pruning_and_local_loss_on_the_wire(tmp_path):
    """One round with gamma = 0.5: each client makes ceil(gamma * local_steps)
    split steps on batches of its ceil(gamma * n) kept samples, and local-loss
    steps change client FLOPs but not one ledger byte."""
    cfg = load_config(SFPROMPT)
    runs = {}
    for steps in (0, 3):
        runs[steps] = launch(tmp_path, 3, "federation.rounds=1", f"options.local_loss_steps={steps}",
                             config=SFPROMPT, name=f"ll{steps}", timeout=TIMEOUT)
        assert_ok(runs[steps])
    wire = {k: [(r["client"], r["direction"], r["kind"], r["bytes"]) for r in run.ledger if r["bytes"]]
            for k, run in runs.items()}
    assert wire[0] == wire[3]
    assert runs[3].summary["total_client_flops"] > runs[0].summary["total_client_flops"]
    p, h, gamma = cfg.options.prompt_tokens, cfg.model.hidden_size, cfg.options.prune_ratio
    n = cfg.data.max_train_samples // cfg.federation.num_clients
    batch = min(cfg.train.batch_size, math.ceil(gamma * n))
    steps = math.ceil(gamma * cfg.train.local_steps)
    per = defaultdict(list)
    for r in runs[3].ledger:
        per[(r["client"], r["kind"], r["direction"])].append(r["bytes"])
    for c in range(cfg.federation.num_clients):
        masks = per[(c, "mask", "up")]
        assert len(masks) == steps
        for kind in ("activations", "gradients"):
            for direction in ("up", "down"):
                assert per[(c, kind, direction)] == [m * h * 4 for m in masks]
        for m in masks:  # batch x (padded width + prompt), width a multiple of 8
            assert m % batch == 0 and (m // batch - p) % 8 == 0
