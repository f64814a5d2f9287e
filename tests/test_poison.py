"""Backdoor poisoning: exact shares of clients and samples, trigger placement,
and an attack success rate computed only over non-target test samples."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import assert_ok, launch
from fedmpi.config import AttackConfig
from fedmpi.data.poison import (Backdoor, asr_evaluator, insert_trigger, malicious_clients, poisoned_indices,
                                triggered_test)
from fedmpi.data.sources import TextSplit


def split(n: int, labels=None) -> TextSplit:
    labels = np.arange(n) % 2 if labels is None else np.asarray(labels)
    return TextSplit([f"sample number {i} here" for i in range(n)], labels.astype(np.int64))


def test_insert_trigger_positions():
    assert insert_trigger("a b c", "cf", 0) == "cf a b c"
    assert insert_trigger("a b c", "cf", 2) == "a b cf c"
    assert insert_trigger("a b c", "cf", -1) == "a b c cf"
    assert insert_trigger("a b c", "cf", 10) == "a b c cf"


@pytest.mark.parametrize("num_clients,fraction,expected", [(10, 0.1, 1), (10, 0.25, 3), (7, 0.5, 4), (5, 0.0, 0),
                                                            (4, 1.0, 4)])
def test_malicious_share_is_exact(num_clients, fraction, expected):
    chosen = malicious_clients(num_clients, fraction, seed=3)
    assert len(chosen) == expected == len(set(chosen))
    assert chosen == malicious_clients(num_clients, fraction, seed=3)  # the seed alone decides


@pytest.mark.parametrize("n,rate,expected", [(40, 0.5, 20), (33, 0.3, 10), (5, 0.5, 3), (8, 1.0, 8), (8, 0.0, 0)])
def test_poisoning_inserts_trigger_in_exactly_the_configured_share(n, rate, expected):
    attack = AttackConfig(malicious_fraction=0.5, poison_rate=rate, trigger="cf", trigger_position=1,
                          target_label=1)
    bd = Backdoor(attack, num_clients=4, seed=0)
    bad = sorted(bd.malicious)
    good = sorted(set(range(4)) - bd.malicious)
    assert len(bad) == 2
    clean = split(n)
    out = bd(bad[0], clean)
    hit = [i for i, t in enumerate(out.texts) if t.split()[1] == "cf"]
    assert len(hit) == expected
    assert hit == poisoned_indices(n, rate, 0, bad[0]).tolist()
    assert all(out.labels[i] == 1 for i in hit)  # relabelled to the target
    untouched = [i for i in range(n) if i not in hit]
    assert all(out.texts[i] == clean.texts[i] and out.labels[i] == clean.labels[i] for i in untouched)
    assert bd(good[0], clean) is clean  # honest clients keep their data


def test_triggered_test_keeps_only_non_target_samples():
    attack = AttackConfig(trigger="cf", trigger_position=0, target_label=1)
    test = split(10, labels=[0, 1, 1, 0, 2, 1, 0, 1, 2, 1])
    trig = triggered_test(test, attack)
    assert len(trig) == 5 and 1 not in trig.labels.tolist()
    assert all(t.startswith("cf ") for t in trig.texts)


class TriggerDetector(torch.nn.Module):
    """Predicts the target (1) iff token `tid` is in the input; else label 0."""

    def __init__(self, tid: int) -> None:
        super().__init__()
        self.tid = tid

    def forward(self, input_ids, labels=None, **_):
        hit = (input_ids == self.tid).any(-1).float()
        return SimpleNamespace(logits=torch.stack([1 - hit, hit], -1))


def test_asr_counts_only_non_target_samples():
    from fedmpi.config import ModelConfig
    from fedmpi.data.federated import FederatedData
    from fedmpi.data.sources import Task
    from fedmpi.models.backbone import load_tokenizer

    tok = load_tokenizer(ModelConfig(name="tiny-bert"))
    attack = AttackConfig(malicious_fraction=0.1, trigger="cf", target_label=1)
    test = TextSplit(["good film", "bad film", "fine film", "okay film"], np.array([1, 0, 0, 1]))
    task = Task("t", test, test, ["neg", "pos"])
    data = FederatedData(task, [np.arange(4)], tok, 16, 0)
    exp = SimpleNamespace(cfg=SimpleNamespace(attack=attack, train=SimpleNamespace(eval_batch_size=8)),
                          task=task, data=data, rt=SimpleNamespace(device=torch.device("cpu")))
    asr = asr_evaluator(exp)
    cf = tok.convert_tokens_to_ids("cf")
    assert asr(TriggerDetector(cf))["attack_success_rate"] == 1.0
    # a model that says "target" only for "good"/"okay" (true-target samples) scores 0: they are not counted
    good = tok.convert_tokens_to_ids("good")
    assert asr(TriggerDetector(good))["attack_success_rate"] == 0.0


@pytest.mark.mpi
def test_backdoor_run_reports_asr(tmp_path):
    run = launch(tmp_path, 3, "attack.malicious_fraction=0.5", "attack.poison_rate=0.5", "attack.target_label=1",
                 "federation.rounds=2", name="backdoor", timeout=600)
    assert_ok(run)
    evaluated = [m for m in run.metrics if m["accuracy"] is not None]
    assert evaluated and all(0.0 <= m["attack_success_rate"] <= 1.0 for m in evaluated)
    assert run.summary["final_attack_success_rate"] == evaluated[-1]["attack_success_rate"]
