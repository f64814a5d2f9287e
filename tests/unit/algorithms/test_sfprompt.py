"""SFPrompt's EL2N pruning keeps exactly the ceil(gamma n) hardest samples."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from conftest import ROOT, tiny_split_setup
from fedmpi.algorithms.sfprompt import el2n_scores, hardest, keep_count
from fedmpi.config import load_config
from fedmpi.models.split import SplitModel, SplitPoints

SPLITFED = ROOT / "configs" / "tiny_splitfed.yaml"


@pytest.fixture(scope="module")
def tiny():
    """(cfg, prepared model/data, FederatedData) of the tiny split config."""
    return tiny_split_setup()


def test_keep_count_is_an_exact_ceiling():
    assert keep_count(10, 0.3) == 3  # 0.3 * 10 = 3.0000000000000004 in floating point
    assert keep_count(10, 0.31) == 4
    assert keep_count(37, 0.5) == 19
    assert keep_count(5, 1.0) == 5
    assert keep_count(3, 0.01) == 1


@pytest.mark.parametrize("n,gamma", [(10, 0.3), (37, 0.5), (64, 0.25), (7, 1.0)])
def test_pruning_keeps_exactly_the_hardest(n, gamma):
    scores = np.random.default_rng(n).random(n)
    kept = hardest(scores, gamma)
    assert len(kept) == math.ceil(round(gamma * n, 9))
    assert len(set(kept.tolist())) == len(kept)
    dropped = np.setdiff1d(np.arange(n), kept)
    if len(dropped):
        assert scores[kept].min() > scores[dropped].max()
    assert set(kept.tolist()) == set(np.argsort(-scores)[:len(kept)].tolist())


def test_stratified_pruning_keeps_the_same_count_shared_by_class():
    rng = np.random.default_rng(1)
    labels = np.array([0] * 30 + [1] * 10)
    scores = np.where(labels == 1, 1.0, 0.0) + rng.random(40) * 0.1  # every class-1 sample is harder
    plain = hardest(scores, 0.25)
    assert set(labels[plain].tolist()) == {1}  # plain EL2N: one class only
    strat = hardest(scores, 0.25, labels)
    assert len(strat) == 10 and (labels[strat] == 0).sum() == 8 and (labels[strat] == 1).sum() == 2
    for y in (0, 1):
        idx = np.flatnonzero(labels == y)
        mine = np.intersect1d(strat, idx)
        assert scores[mine].min() >= scores[np.setdiff1d(idx, mine)].max()


def test_el2n_is_the_norm_of_softmax_minus_onehot(tiny):
    cfg, prep, data = tiny
    split = SplitModel(copy.deepcopy(prep.model), SplitPoints(1, 1, 2))
    scores, _ = el2n_scores(split, data.client_all(0, 16), torch.device("cpu"))
    assert len(scores) == data.client_size(0)
    split.eval()
    with torch.no_grad():
        for idx, batch in data.client_all(0, 16):
            p = split.shortcut(batch).softmax(-1)
            p[torch.arange(len(idx)), batch["labels"]] -= 1
            np.testing.assert_allclose(scores[idx], p.norm(dim=-1).numpy(), rtol=1e-6)


def test_defaults_are_the_papers_layout_and_phase_order():
    from fedmpi.algorithms.sfprompt import SFPromptOptions

    o = SFPromptOptions()
    assert (o.split_head_layers, o.split_tail_layers) == (0, 0)  # client: embeddings + prompt | pooler + classifier
    assert o.local_loss_steps is None and o.pool == "mean"
    assert SFPromptOptions(split_head_layers=1).pool == "cls"


def test_el2n_scores_come_after_the_local_loss_steps(tmp_path, monkeypatch):
    """The paper's order on every client: local-loss updates, then EL2N pruning with the model
    they left (not the untrained one), then split training with the server."""
    import threading

    from fake_cluster import run_cluster
    from fedmpi.metering.flops import FlopMeter

    calls = []
    real = FlopMeter.run

    def spy(self, key, fn):
        calls.append((threading.current_thread().name, key[0]))
        return real(self, key, fn)

    monkeypatch.setattr(FlopMeter, "run", spy)
    cfg = load_config(ROOT / "configs" / "tiny_sfprompt.yaml",
                      [f"output.dir={tmp_path}", "output.progress=false", "federation.rounds=1"])
    run_cluster(cfg, 3, monkeypatch, device=torch.device("cpu"))
    tags = [t for rank, t in calls if rank == "rank1"]  # the rank hosting client 0
    phases = [t for i, t in enumerate(tags) if i == 0 or tags[i - 1] != t]
    assert phases[:3] == ["local-loss", "el2n", "split-head-fwd"], phases
    assert tags.count("local-loss") == cfg.options.local_loss_steps
    assert "local-loss" not in tags[tags.index("el2n"):]
